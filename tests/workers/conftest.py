"""Fixtures for the worker tests: real Redis (DB 11), real SeaweedFS S3, a real Triton
server with a deterministic model, and real ``celery worker`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from inspectq.config import Settings
from inspectq.jobs import ImageRef, JobRecord, JobStore, Status, new_job_id, utc_now
from inspectq.keyspace import PENDING_PREFIX, keys_for
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, fresh_postgres, settings_env
from tests.workers.triton_server import TritonProcess, start_triton
from workers.services import Services, build_services

REDIS_URL = "redis://127.0.0.1:6379/11"
TRITON_PORTS = (28300, 28301, 28302)  # http, grpc, metrics
CLOSED_PORT_URL = "127.0.0.1:9"  # nothing listens on the discard port here


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A real tritonserver serving the fixture model; fails the test loudly if it can't."""
    server = start_triton(tmp_path_factory.mktemp("triton"), *TRITON_PORTS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url() -> str:
    """The results index of the worker tests: a fresh PostgreSQL database for the session."""
    return fresh_postgres("inspectq_workers_test")


@pytest.fixture
def settings(s3_endpoint: str, triton: TritonProcess, database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        s3_endpoint_url=s3_endpoint,
        s3_bucket="workers-tests",
        s3_access_key_id=TEST_ACCESS_KEY,
        s3_secret_access_key=TEST_SECRET_KEY,
        triton_url=triton.grpc_url,
        triton_timeout_s=10,
        max_retries=2,
        retry_backoff_max_s=1,
        min_region_px=12,
    )


@pytest.fixture
def services(settings: Settings, redis_client: redis.Redis) -> Iterator[Services]:
    built = build_services(settings)
    built.store.ensure_bucket()
    for marker in built.store.list_keys(PENDING_PREFIX):  # no leftovers of other tests
        built.store.delete(marker)
    yield built
    built.model.close()


def png(image_rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def strip_with_scratch(seed: int = 0) -> np.ndarray:
    """A 1600x256 grey steel strip with one red 40x20 scratch near the right edge (the
    fixture model calls pure red 'scratch'); ``seed`` varies the grey so bytes differ."""
    image = np.full((256, 1600, 3), 90 + seed, np.uint8)
    image[10:30, 1500:1540] = (255, 0, 0)
    return image


def slow_image(seed: int = 0) -> np.ndarray:
    """One tile whose first row tells the fixture model to sleep (mid-inference window)."""
    image = np.full((256, 256, 3), 100 + seed, np.uint8)
    image[0, :] = (1, 2, 3)
    return image


def submit(services: Services, data: bytes, *, line: str = "line-1",
           thresholds: tuple[float, float] = (0.40, 0.65), tenant: str = "default") -> str:
    """Accept a job the way the ingest API does: image to S3, then the job record."""
    import hashlib

    job_id = new_job_id()
    keys = keys_for(job_id)
    services.store.put(keys.image, data, "image/png")
    now = utc_now()
    services.jobs.create(JobRecord(
        id=job_id, tenant=tenant, status=Status.QUEUED, created_at=now, updated_at=now,
        enqueued_at=time.time(), line=line,
        thresholds={"pass": thresholds[0], "reject": thresholds[1]},
        image=ImageRef(key=keys.image, sha256=hashlib.sha256(data).hexdigest(),
                       bytes=len(data), content_type="image/png"),
    ))
    return job_id


def accepted_seconds_ago(services: Services, job_id: str, seconds: float) -> None:
    """Make the durable record look accepted ``seconds`` ago (and drop the cached copy):
    a job older than the reconciler's enqueue grace."""
    from datetime import UTC, datetime, timedelta

    from inspectq import keyspace

    then = (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    aged = services.jobs.get(job_id).model_copy(update={"created_at": then, "updated_at": then})
    services.store.put(keyspace.pending(job_id), aged.to_json().encode())
    services.redis.delete(keyspace.job_cache(job_id))


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class WorkerProcess:
    """A real ``celery -A workers.main worker`` (prefork, -O fair) in its own process group
    (``app``: another app module, e.g. ``tests.workers.paused_worker``)."""

    def __init__(self, settings: Settings, log_path: Path, *, concurrency: int = 1,
                 extra_env: dict[str, str] | None = None, app: str = "workers.main") -> None:
        env = {**settings_env(settings), **(extra_env or {})}
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", "inspectq",
             "-O", "fair",
             "--concurrency", str(concurrency), "--pool", "prefork", "-l", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-n", f"test-{time.monotonic_ns()}@%h"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(lambda: b"ready." in log_path.read_bytes() or self.process.poll() is not None,
                 30, "celery worker ready")
        assert self.process.poll() is None, self.log()

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True)
        return [int(pid) for pid in out.stdout.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Test teardown: SIGKILL (each test flushes Redis, so nothing carries over) saves
        the seconds of Celery's warm shutdown per worker."""
        self.kill()
        self._log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings, **kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker{len(started)}.log", **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def job_status(jobs: JobStore, job_id: str) -> Status:
    record = jobs.get(job_id)
    assert record is not None
    return record.status
