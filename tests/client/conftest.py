"""Fixtures for the client tests: the SDK and the ``inspectq`` client commands against the
real API under gunicorn (``api/gunicorn.conf.py``), on Redis DB 7, a real S3 server
(SeaweedFS, bucket ``client-tests``) and a SQLite results index.

No Celery worker or Triton runs, so jobs stay ``queued`` until a test ends them the way a
worker does: :class:`FakeWorker` takes job ids off the real Celery queue and records each
outcome with ``JobStore.finish`` (a real ``InspectionResult``), then indexes the record as
the indexer would.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask
from PIL import Image

from devstack.ports import free_port, wait_until
from inspectq.backends import Backends
from inspectq.config import Settings
from inspectq.index import ResultsIndex
from inspectq.jobs import JobRecord
from inspectq.keyspace import QUEUE
from inspectq.result import Decision, InspectionResult, ModelInfo, Region, Thresholds, Timings
from inspectq.storage import ObjectStore
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, settings_env

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/7"
BUCKET = "client-tests"
#: The API's bootstrap key (tenant ``default``).
API_KEY = "inspectq-dev-key"
SCORES = {Decision.PASS: 0.12, Decision.REVIEW: 0.5, Decision.REJECT: 0.91}


class Api:
    """The API under real gunicorn on a free port, in its own session (killed as a group)."""

    def __init__(self, settings: Settings, log_path: Path, port: int | None = None,
                 **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py",
             "--bind", f"127.0.0.1:{self.port}", "api.app:create_app()"],
            cwd=REPO, env={**settings_env(settings), "INSPECTQ_PUBLIC_URL": self.url, **env},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def ready(self) -> Api:
        """Wait until /healthz answers (the app is loaded, not only the port bound)."""
        wait_until(lambda: self._healthy() or self.proc.poll() is not None, 60, "the API")
        assert self.proc.poll() is None, self.log_path.read_text()
        return self

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def settings(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The servers' settings: S3 bucket made, results index migrated (SQLite)."""
    settings = Settings(
        redis_url=REDIS_URL,
        s3_endpoint_url=s3_endpoint,
        s3_bucket=BUCKET,
        s3_access_key_id=TEST_ACCESS_KEY,
        s3_secret_access_key=TEST_SECRET_KEY,
        triton_url=f"127.0.0.1:{free_port()}",  # no Triton in these tests
        database_url=f"sqlite:///{tmp_path_factory.mktemp('index') / 'index.sqlite3'}",
        rate_limit="10000/minute",
        max_wait_s=2,  # short long-polls, so a client's wait loops over several
    )
    ObjectStore(settings).ensure_bucket()
    index = ResultsIndex.from_settings(settings)
    index.migrate()
    index.close()
    return settings


@pytest.fixture(autouse=True)
def _empty_redis(redis_client: redis.Redis) -> None:
    """Every test starts on an empty DB 7 (``redis_client`` from tests/conftest.py)."""


@pytest.fixture(scope="session")
def start_api(settings: Settings, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Callable[..., Api]]:
    """Start an API with INSPECTQ_* overrides (``ready()`` it); all are killed at the end."""
    logs = tmp_path_factory.mktemp("api-logs")
    started: list[Api] = []

    def start(port: int | None = None, **env: str) -> Api:
        api = Api(settings, logs / f"gunicorn{len(started)}.log", port, **env)
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


@pytest.fixture(scope="session")
def api(start_api: Callable[..., Api]) -> Api:
    """The API most tests share."""
    return start_api().ready()


@pytest.fixture(scope="session")
def rate_limited_api(start_api: Callable[..., Api]) -> Api:
    """An API that takes 5 requests a second per key (429 with Retry-After above that)."""
    return start_api(INSPECTQ_RATE_LIMIT="5/second").ready()


@pytest.fixture(scope="session")
def backends(settings: Settings) -> Backends:
    return Backends.connect(settings)


@pytest.fixture(scope="session")
def results_index(settings: Settings) -> Iterator[ResultsIndex]:
    index = ResultsIndex.from_settings(settings)
    yield index
    index.close()


def inspection_result(decision: Decision) -> InspectionResult:
    """A real result as a worker records it (one scratch unless the decision is PASS)."""
    score = SCORES[decision]
    defects = [] if decision is Decision.PASS else [
        Region(class_name="scratch", score=score, bbox=(2, 3, 10, 12), area_px=40,
               area_ratio=40 / 256)]
    return InspectionResult(
        decision=decision, score=score, defects=defects, width=16, height=16,
        model=ModelInfo(name="inspectq_seg", version="1", sha256="",
                        classes=("background", "scratch", "pit", "crack", "stain")),
        thresholds=Thresholds(pass_threshold=0.40, reject_threshold=0.65),
        timings=Timings(total_ms=5.0), cache_hit=False)


def finish(backends: Backends, index: ResultsIndex, job_id: str,
           decision: Decision = Decision.PASS) -> JobRecord:
    """End a job as a worker does (``JobStore.finish``) and index it as the indexer does."""
    record = backends.jobs.finish(job_id, result=inspection_result(decision))
    index.upsert([record])
    return record


def queued_job_id(message: bytes) -> str:
    """The job id in a Celery message off the queue (the body is ``[[job_id], {}, {...}]``)."""
    body = json.loads(base64.b64decode(json.loads(message)["body"]))
    return body[0][0]


class FakeWorker:
    """Takes each job off the real Celery queue and finishes it: with the decision that
    ``decisions`` names for its image's sha256, PASS otherwise."""

    def __init__(self, backends: Backends, index: ResultsIndex) -> None:
        self.backends, self.index = backends, index
        self.decisions: dict[str, Decision] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        queue = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        while not self._stop.is_set():
            popped = queue.brpop([QUEUE], timeout=0.2)
            if popped is None:
                continue
            job_id = queued_job_id(popped[1])
            record = self.backends.jobs.get(job_id)
            assert record is not None, job_id
            finish(self.backends, self.index, job_id,
                   self.decisions.get(record.image.sha256, Decision.PASS))

    def __enter__(self) -> FakeWorker:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def fake_worker(backends: Backends, results_index: ResultsIndex) -> Iterator[FakeWorker]:
    with FakeWorker(backends, results_index) as worker:
        yield worker


def png(seed: int | None = None, size: int = 16) -> bytes:
    """A small grey PNG of random pixels: each call's bytes are new (a new job), unless
    the same ``seed`` is given."""
    rng = random.Random(seed)
    image = Image.frombytes("L", (size, size), bytes(rng.randrange(256) for _ in range(size**2)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_pngs(folder: Path, count: int) -> list[Path]:
    """``count`` distinct PNGs, some in a subfolder (found recursively), and one file that
    is not an image (skipped)."""
    (folder / "sub").mkdir(parents=True)
    paths = [folder / ("sub" if i % 3 == 0 else "") / f"part-{i:02}.png" for i in range(count)]
    for path in paths:
        path.write_bytes(png())
    (folder / "notes.txt").write_text("not an image")
    return paths


@functools.cache
def _app() -> Flask:
    from api.app import create_app

    index = Path(tempfile.gettempdir()) / "inspectq-client-probe" / "index.sqlite3"
    return create_app(Settings(redis_url=REDIS_URL, database_url=f"sqlite:///{index}"))


def missing(method: str, path: str) -> bool:
    """True when the API (this checkout's app) answers ``method path`` 404 or 405: the
    route does not exist yet (one that exists answers 401 to a request without a key)."""
    return _app().test_client().open(path, method=method).status_code in (404, 405)


needs_listing = pytest.mark.skipif(
    missing("GET", "/v1/jobs"),
    reason="GET /v1/jobs (the results listing) does not exist yet: it answers 405")
needs_export = pytest.mark.skipif(
    missing("GET", "/v1/exports"),
    reason="GET /v1/exports (the streamed export) does not exist yet: it answers 404")
needs_feedback = pytest.mark.skipif(
    missing("POST", f"/v1/jobs/j_{'A' * 22}/feedback"),
    reason="POST /v1/jobs/<id>/feedback does not exist yet: it answers 404")
