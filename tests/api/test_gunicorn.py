"""The API under real gunicorn (api/gunicorn.conf.py) over real HTTP: a chunked body over
the limit is refused, and SIGTERM lets an in-flight long-poll finish before exiting."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.ports import free_port, port_open, wait_until
from inspectq import keyspace
from inspectq.backends import Backends
from inspectq.config import Settings
from inspectq.storage import ObjectStore
from tests.api.conftest import AUTH, image_bytes, queued_job_ids
from tests.conftest import settings_env

REPO = Path(__file__).resolve().parents[2]


class Gunicorn:
    """A real gunicorn serving ``app`` (a ``module:factory()`` spec) in its own session."""

    def __init__(self, settings: Settings, log_path: Path, app: str = "api.app:create_app()",
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "INSPECTQ_REDIS_URL": settings.redis_url,
            "INSPECTQ_S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
            "INSPECTQ_S3_BUCKET": settings.s3_bucket,
            "INSPECTQ_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
            "INSPECTQ_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
            "INSPECTQ_MAX_UPLOAD_BYTES": "2000",
            "INSPECTQ_MAX_WAIT_S": "4",
            **(extra_env or {}),
        }
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py",
             "--bind", f"127.0.0.1:{self.port}", app],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, 30,
                   "gunicorn")
        assert self.proc.poll() is None, log_path.read_text()

    def kill(self) -> None:
        """SIGKILL the master and its workers, as a node loss would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def start_gunicorn(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(**kwargs: Any) -> Gunicorn:
        server = Gunicorn(settings, tmp_path / f"gunicorn{len(started)}.log", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def gunicorn(start_gunicorn: Callable[..., Gunicorn]) -> tuple[subprocess.Popen, int]:
    server = start_gunicorn()
    return server.proc, server.port


def request(port: int, method: str, path: str, body: bytes | Iterator[bytes] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body, headers={**AUTH, **(headers or {})},
                           encode_chunked=not isinstance(body, bytes | None))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_chunked_body_over_the_limit_is_413(gunicorn: tuple[subprocess.Popen, int]) -> None:
    _, port = gunicorn
    status, body = request(port, "POST", "/v1/jobs", body=iter([b"\0" * 1500] * 4),
                           headers={"Content-Type": "image/png"})
    assert status == 413 and b"too_large" in body
    status, _ = request(port, "POST", "/v1/jobs", body=image_bytes(),
                        headers={"Content-Type": "image/png"})
    assert status == 202


def test_sigterm_drains_an_in_flight_long_poll(
    gunicorn: tuple[subprocess.Popen, int], settings: Settings,
) -> None:
    proc, port = gunicorn
    status, body = request(port, "POST", "/v1/jobs", body=image_bytes(),
                           headers={"Content-Type": "image/png"})
    assert status == 202
    job_id = body.split(b'"id":"')[1].split(b'"')[0].decode()

    results: list[tuple[int, bytes]] = []
    poll = threading.Thread(
        target=lambda: results.append(request(port, "GET", f"/v1/jobs/{job_id}?wait=3"))
    )
    # Signal only once the long-poll is in flight: its handler has read the job's record
    # (seen on Redis' MONITOR stream) and now waits for the job to end.
    watcher = redis.Redis.from_url(settings.redis_url, socket_timeout=20)
    with watcher.monitor() as commands:
        poll.start()
        while f"inspectq:job:{job_id}" not in commands.next_command()["command"]:
            pass
    proc.send_signal(signal.SIGTERM)
    poll.join(timeout=20)
    assert results and results[0][0] == 200 and b'"status":"queued"' in results[0][1]
    assert proc.wait(timeout=20) == 0


def test_gunicorn_refusals_are_json_and_secrets_never_reach_the_access_log(
    gunicorn: tuple[subprocess.Popen, int], tmp_path: Path,
) -> None:
    _, port = gunicorn
    status, body = request(port, "GET", "/v1/jobs/" + "a" * 9000)
    assert status == 414 and json.loads(body)["error"]["code"] == "uri_too_long"
    status, body = request(port, "GET", "/healthz", headers={"X-Big": "b" * 9000})
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_headers_too_large"
    secret = "iq_query-string-secret-0123456789"
    status, _ = request(port, "GET", f"/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA?api_key={secret}")
    assert status == 404
    wait_until(lambda: "/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA" in
               (tmp_path / "gunicorn0.log").read_text(), 5, "the access log line")
    assert secret not in (tmp_path / "gunicorn0.log").read_text()


def _post_until_killed(port: int, key: str) -> threading.Thread:
    """POST an image with ``key`` in the background; the server dies before answering."""
    def post() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            request(port, "POST", "/v1/jobs", body=image_bytes(),
                    headers={"Content-Type": "image/png", "Idempotency-Key": key})

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def _kill_paused_ingest(start_gunicorn: Callable[..., Gunicorn], tmp_path: Path, where: str,
                        key: str) -> None:
    paused = tmp_path / f"paused-{where}"
    doomed = start_gunicorn(app="tests.api.paused_api:create_app()", extra_env={
        "INSPECTQ_TEST_PAUSE_AT": where, "INSPECTQ_TEST_PAUSED_FILE": str(paused)})
    client = _post_until_killed(doomed.port, key)
    wait_until(paused.exists, 30, f"the ingest paused {where}")
    doomed.kill()
    client.join(timeout=30)


def _retry(port: int, key: str) -> tuple[int, dict[str, Any]]:
    status, body = request(port, "POST", "/v1/jobs", body=image_bytes(),
                           headers={"Content-Type": "image/png", "Idempotency-Key": key})
    return status, json.loads(body)


def test_api_killed_after_recording_a_job_before_enqueueing_it_loses_nothing(
    start_gunicorn: Callable[..., Gunicorn], settings: Settings, tmp_path: Path,
    redis_client: redis.Redis,
) -> None:
    """Kill point: the API process is SIGKILLed mid-ingest, the job recorded, its message
    never sent. The client's retry gets that job back (no second job), and the reconciler
    puts it on the queue."""
    key = f"kill-{uuid.uuid4()}"
    _kill_paused_ingest(start_gunicorn, tmp_path, "after_record", key)
    store = ObjectStore(settings)
    job_id = store.get_json(keyspace.idempotency_claim("default", key))["job_id"]
    pending = keyspace.pending(job_id)
    assert store.get(pending) is not None  # recorded...
    assert queued_job_ids(redis_client) == []  # ...and the message was never sent
    server = start_gunicorn()
    status, body = _retry(server.port, key)
    assert status == 202 and body["id"] == job_id and body["status"] == "queued"
    backends = Backends.connect(settings)
    record = backends.jobs.get(job_id)
    aged = record.model_copy(update={"updated_at": "2020-01-01T00:00:00.000Z"})
    store.put(pending, aged.to_json().encode(), "application/json")
    redis_client.delete(keyspace.job_cache(job_id))
    ran = subprocess.run([str(Path(sys.executable).with_name("inspectq")), "reconcile"],
                         env=settings_env(settings), capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    # (The bucket is shared with other API tests: the reconciler may requeue theirs too.)
    assert queued_job_ids(redis_client).count(job_id) == 1


def test_api_killed_after_claiming_a_key_before_recording_the_job_loses_nothing(
    start_gunicorn: Callable[..., Gunicorn], settings: Settings, tmp_path: Path,
    redis_client: redis.Redis,
) -> None:
    """Kill point: image stored and Idempotency-Key claimed, then SIGKILL before the job's
    record. A retry is told to wait while the claim may still be live; once it is
    abandoned, the retry builds the claimed job: one job, queued, under the claimed id."""
    key = f"kill-{uuid.uuid4()}"
    _kill_paused_ingest(start_gunicorn, tmp_path, "after_claim", key)
    store = ObjectStore(settings)
    claim_key = keyspace.idempotency_claim("default", key)
    claim = store.get_json(claim_key)
    assert store.get(keyspace.pending(claim["job_id"])) is None  # no job recorded
    server = start_gunicorn()
    status, body = _retry(server.port, key)
    assert status == 409 and body["error"]["code"] == "idempotency_in_progress"
    store.put_json(claim_key, {**claim, "claimed_at": claim["claimed_at"] - 3600})
    status, body = _retry(server.port, key)
    assert status == 202 and body["id"] == claim["job_id"], body
    assert "Idempotent-Replayed" not in body
    assert queued_job_ids(redis_client) == [claim["job_id"]]
    status, again = _retry(server.port, key)
    assert status == 202 and again["id"] == claim["job_id"]
    assert queued_job_ids(redis_client) == [claim["job_id"]]
