"""The HTTP client: one ``requests.Session`` with urllib3's retry policy mounted on it."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self, TypedDict, Unpack
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from inspectq_client.errors import ApiError
from inspectq_client.models import Accepted, Job

#: The longest long-poll asked for at once (the API's default max_wait_s; it caps the wait
#: at its own setting anyway).
LONG_POLL_S = 30.0
#: A wait never asks more often than this, even against an API that does not long-poll.
MIN_POLL_INTERVAL_S = 1.0
#: The longest Retry-After obeyed; a longer one is waited this long before the retry.
RETRY_AFTER_MAX_S = 60
#: Answers retried (a Retry-After in them is honoured): rate limited, the API or a proxy in
#: front of it unavailable. The API accepted nothing in each of these.
RETRY_STATUSES = (429, 502, 503, 504)


class Filters(TypedDict, total=False):
    """Which jobs :meth:`Client.results` and :meth:`Client.export` cover; all given must
    match. ``since`` (inclusive) and ``until`` (exclusive) bound the job's creation time (an
    ISO 8601 string, or a datetime; a naive one is UTC). ``feedback``: ``none``, ``any``,
    ``confirm`` or ``correct``."""

    line: str
    camera: str
    decision: Literal["PASS", "REVIEW", "REJECT"]
    status: Literal["done", "failed"]
    since: datetime | str
    until: datetime | str
    feedback: Literal["none", "any", "confirm", "correct"]


class _Retry(Retry):
    """urllib3's retry, which also retries a 409 when it carries Retry-After: the API's
    ``idempotency_in_progress`` (another request with the same key is being accepted right
    now; the retry gets that request's job)."""

    RETRY_AFTER_STATUS_CODES = frozenset({409, 429, 503})


def default_idempotency_key(data: bytes, line: str, camera: str | None = None) -> str:
    """The Idempotency-Key :meth:`Client.submit` sends unless given one:
    ``"iqc1-" + sha256_hex(f"{sha256_hex(image)}\\n{line}\\n{camera or ''}")``.

    The same image for the same line and camera always gets the same key, so submitting it
    again (a re-run after a crash, a retry after a lost answer) answers the job made the
    first time instead of making a second one. The API keeps keys per tenant, and refuses a
    key reused with other thresholds or metadata (422 ``idempotency_key_reused``): pass an
    explicit ``idempotency_key`` to submit the same image again with other options.
    """
    image = hashlib.sha256(data).hexdigest()
    return "iqc1-" + hashlib.sha256(f"{image}\n{line}\n{camera or ''}".encode()).hexdigest()


def _query(filters: Mapping[str, Any]) -> dict[str, str]:
    return {name: value.isoformat() if isinstance(value, datetime) else str(value)
            for name, value in filters.items() if value is not None}


class Client:
    """A client of one inspectq API, safe to share between threads.

    ``timeout_s`` bounds each request's connect and each read (a long-poll gets its wait on
    top). ``max_retries`` bounds the retries of one call: on connection errors (with
    exponential backoff from 0.5 s), on 429/502/503/504, and on a 409 that says Retry-After
    (each waiting what the answer's ``Retry-After`` says, at most 60 s). Every method
    retries, POST included: :meth:`submit` always sends an Idempotency-Key, so a retried
    upload never makes a second job. ``pool_size`` is the connections kept open: at least
    the number of threads calling at once.

    Failures raise :class:`ApiError` (the API answered an error) or
    ``requests.RequestException`` (it could not be reached, after the retries).
    """

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 30.0,
                 max_retries: int = 8, pool_size: int = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        retry = _Retry(total=max_retries, backoff_factor=0.5, backoff_max=30,
                       status_forcelist=RETRY_STATUSES, allowed_methods=None,
                       raise_on_status=False, retry_after_max=RETRY_AFTER_MAX_S)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=pool_size)
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def _request(self, method: str, path: str, *, timeout_s: float | None = None,
                 **kwargs: Any) -> requests.Response:
        """Send one request (retried as the class says); raise ApiError unless it is 2xx."""
        response = self._session.request(method, self.url + path,
                                         timeout=timeout_s or self.timeout_s, **kwargs)
        if not response.ok:
            error = ApiError.from_response(response)
            response.close()
            raise error
        return response

    def submit(
        self,
        image: str | os.PathLike[str] | bytes,
        line: str,
        camera: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        thresholds: tuple[float, float] | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Submit one image (a path, or its bytes) for inspection on ``line``.

        ``metadata`` is stored with the job (a JSON object); ``thresholds`` is the job's
        ``(pass, reject)`` pair (default: the API's). Without ``idempotency_key`` the key is
        :func:`default_idempotency_key` of the image, line and camera: submitting the same
        again answers the first job, with ``Accepted.replayed`` true.
        """
        if isinstance(image, bytes):
            data, filename = image, "image"
        else:
            path = Path(image)
            data, filename = path.read_bytes(), path.name
        form = {"line": line}
        if camera is not None:
            form["camera"] = camera
        if metadata is not None:
            form["metadata"] = json.dumps(metadata)
        if thresholds is not None:
            form["pass_threshold"], form["reject_threshold"] = (str(t) for t in thresholds)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        key = idempotency_key or default_idempotency_key(data, line, camera)
        response = self._request("POST", "/v1/jobs", data=form,
                                 files={"image": (filename, data, content_type)},
                                 headers={"Idempotency-Key": key})
        body = response.json()
        return Accepted(id=body["id"], status=body["status"], status_url=body["status_url"],
                        replayed=response.headers.get("Idempotent-Replayed") == "true")

    def get(self, job_id: str, wait_s: float = 0.0) -> Job:
        """The job's current state; with ``wait_s``, one long-poll: the API answers as soon
        as the job ends, or after ``wait_s`` (capped by the API's max_wait_s)."""
        params = {"wait": f"{wait_s:g}"} if wait_s > 0 else None
        response = self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}", params=params,
                                 timeout_s=self.timeout_s + wait_s)
        return Job.from_json(response.json())

    def wait(self, job_id: str, timeout_s: float = 300.0) -> Job:
        """Long-poll until the job is done or failed, or ``timeout_s`` has passed; returns
        the job either way (check ``Job.terminal``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            asked = time.monotonic()
            job = self.get(job_id, wait_s=max(0.0, min(deadline - asked, LONG_POLL_S)))
            left = deadline - time.monotonic()
            if job.terminal or left <= 0:
                return job
            time.sleep(max(0.0, min(left, MIN_POLL_INTERVAL_S - (time.monotonic() - asked))))

    def results(self, *, limit: int | None = None, page_size: int = 100,
                **filters: Unpack[Filters]) -> Iterator[dict[str, Any]]:
        """Job summaries matching ``filters``, newest first, following the listing's
        ``next_cursor`` page by page; at most ``limit`` of them (None: all).

        A summary is a dict: id, line, camera, batch_id, status, created_at, finished_at,
        decision, score, defects ({class: count}), defect_count, error_code, model_version,
        thresholds, feedback. Requests are sent as the iteration needs pages.
        """
        query, cursor, count = _query(filters), None, 0
        while limit is None or count < limit:
            size = page_size if limit is None else min(page_size, limit - count)
            params = {**query, "limit": str(size)}
            if cursor is not None:
                params["cursor"] = cursor
            page = self._request("GET", "/v1/jobs", params=params).json()
            for summary in page["jobs"][:size]:
                yield summary
                count += 1
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def export(self, format: Literal["csv", "jsonl"] = "csv", *, chunk_bytes: int = 64 * 1024,
               **filters: Unpack[Filters]) -> Iterator[bytes]:
        """The jobs matching ``filters`` as CSV (with a header row) or JSON lines, streamed:
        chunks of the body as they arrive, never the whole export in memory."""
        response = self._request("GET", "/v1/exports", params={**_query(filters),
                                                               "format": format}, stream=True)
        with response:
            yield from response.iter_content(chunk_size=chunk_bytes)

    def feedback(
        self,
        job_id: str,
        verdict: Literal["confirm", "correct"],
        *,
        decision: Literal["PASS", "REVIEW", "REJECT"] | None = None,
        defects: Sequence[Mapping[str, Any]] | None = None,
        note: str | None = None,
        by: str | None = None,
    ) -> dict[str, Any]:
        """Record an operator's verdict on a finished job: ``confirm`` (the decision was
        right) or ``correct`` (it was not; ``decision`` is the right one, ``defects`` the
        right regions as ``{"class": str, "bbox": [x0, y0, x1, y1]}``). Returns the API's
        answer. (A retry after a lost answer may record the same verdict twice; the latest
        entry is the job's feedback, so the state is the same.)"""
        body: dict[str, Any] = {"verdict": verdict}
        optional = {"decision": decision, "defects": None if defects is None else
                    [dict(defect) for defect in defects], "note": note, "by": by}
        body.update({name: value for name, value in optional.items() if value is not None})
        response = self._request("POST", f"/v1/jobs/{quote(job_id, safe='')}/feedback",
                                 json=body)
        return response.json()
