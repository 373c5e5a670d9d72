"""A small client of inspectq's public HTTP API, as a factory's uploader would use it.

The demo, the benchmark, the chaos run and the end-to-end tests all go through it, so they
exercise exactly what users call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import requests


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class InspectqClient:
    base_url: str
    api_key: str
    timeout_s: float = 60.0
    max_429_retries: int = 30
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers["Authorization"] = f"Bearer {self.api_key}"

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request; a 429 is waited out (its Retry-After) and sent again, as the API asks
        of well-behaved clients."""
        for _attempt in range(self.max_429_retries):
            response = self.session.request(method, url, **kwargs)
            if response.status_code != 429:
                return response
            time.sleep(max(1.0, float(response.headers.get("Retry-After", "1"))))
        return response

    def _check(self, response: requests.Response) -> Any:
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise ApiError(response.status_code, body)
        return response.json()

    def submit(
        self,
        image: bytes,
        name: str = "image.png",
        idempotency_key: str | None = None,
        **fields: str,
    ) -> dict[str, Any]:
        """POST /v1/jobs with a multipart upload; returns the 202 body. With an
        ``idempotency_key``, a retried upload returns the job the first attempt created."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._send(
            "POST",
            f"{self.base_url}/v1/jobs",
            files={"image": (name, image, "application/octet-stream")},
            data=fields,
            headers=headers,
            timeout=self.timeout_s,
        )
        return self._check(response)

    def job(self, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        params = {"wait": f"{wait_s:g}"} if wait_s else {}
        response = self._send(
            "GET", f"{self.base_url}/v1/jobs/{job_id}", params=params,
            timeout=self.timeout_s + wait_s,
        )
        return self._check(response)

    def wait_done(self, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
        """Long-poll until the job is done or failed (or ``timeout_s`` passes)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            body = self.job(job_id, wait_s=max(1.0, min(30.0, left)))
            if body["status"] in ("done", "failed") or left <= 0:
                return body

    def png(self, job_id: str, kind: str) -> bytes:
        """GET /v1/jobs/<id>/mask or /overlay."""
        response = self._send(
            "GET", f"{self.base_url}/v1/jobs/{job_id}/{kind}", timeout=self.timeout_s
        )
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return response.content
