"""The API under real gunicorn (api/gunicorn.conf.py) over real HTTP: a chunked body over
the limit is refused, and SIGTERM lets an in-flight long-poll finish before exiting."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devstack.ports import free_port, port_open, wait_until
from inspectq.config import Settings
from tests.api.conftest import AUTH, image_bytes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gunicorn(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    env = {
        **os.environ,
        "INSPECTQ_REDIS_URL": settings.redis_url,
        "INSPECTQ_S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
        "INSPECTQ_S3_BUCKET": settings.s3_bucket,
        "INSPECTQ_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
        "INSPECTQ_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
        "INSPECTQ_MAX_UPLOAD_BYTES": "2000",
        "INSPECTQ_MAX_WAIT_S": "4",
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "api.app:create_app()"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 30, "gunicorn")
        assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()


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
               (tmp_path / "gunicorn.log").read_text(), 5, "the access log line")
    assert secret not in (tmp_path / "gunicorn.log").read_text()
