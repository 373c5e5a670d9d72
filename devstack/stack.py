"""The local default stack on one machine: what runs, in which order, and how we know it's up.

``up`` starts only what is not already answering (a Redis on 6379 is used as it is), records a
PID file for each process it started, and returns once the API's ``/readyz`` is green.
``down`` stops exactly the processes that have PID files, nothing else.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis
from pydantic import SecretStr

from devstack import procs, seaweed
from devstack.ports import free_port, http_ok, port_open, wait_until
from inspectq.config import Settings
from inspectq.index import JobFilter, ResultsIndex
from inspectq.queue import WORKER_QUEUES, make_celery
from inspectq.storage import ObjectStore

REPO = Path(__file__).resolve().parent.parent
#: Start order; ``down`` stops in reverse.
ORDER = ("redis", "s3", "triton", "worker", "beat", "indexer", "api")


@dataclass(frozen=True)
class StackConfig:
    """Ports and places of the local stack. Service settings come from ``Settings``."""

    settings: Settings
    var_dir: Path = REPO / "var"
    api_port: int = 8080
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    worker_concurrency: int = 6
    # One gunicorn process (32 threads) is enough for a 2-core box; a second one only added
    # CPU contention in `make bench` (API 13.1 -> 12.0 ms of CPU per image with one).
    api_workers: int = 1
    model_python: Path = REPO / ".venv-model" / "bin" / "python"

    @property
    def dirs(self) -> procs.RunDirs:
        return procs.RunDirs(self.var_dir)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def triton_grpc_port(self) -> int:
        return int(self.settings.triton_url.rsplit(":", 1)[1])

    @property
    def redis_port(self) -> int:
        return urlparse(self.settings.redis_url).port or 6379

    @property
    def s3_port(self) -> int:
        return urlparse(self.settings.s3_endpoint_url or "").port or 8333


def venv_bin(name: str) -> str:
    """An executable of the running venv (celery, gunicorn), so no PATH activation is needed."""
    return str(Path(sys.executable).parent / name)


def isolated_config(var_dir: Path, redis_db: int, **overrides: Any) -> StackConfig:
    """A whole second stack on free ports with its own Redis DB and data folder, beside any
    running dev stack: what the end-to-end tests and the chaos run use.
    """
    api_port = free_port()
    overrides.setdefault("database_url", f"sqlite:///{var_dir / 'index.sqlite3'}")
    settings = Settings(
        redis_url=f"redis://127.0.0.1:6379/{redis_db}",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        triton_url=f"127.0.0.1:{free_port()}",
        public_url=f"http://127.0.0.1:{api_port}",
        **overrides,
    )
    return StackConfig(
        settings=settings,
        var_dir=var_dir,
        api_port=api_port,
        triton_http_port=free_port(),
        triton_metrics_port=free_port(),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the INSPECTQ_* environment a child process reads them back from."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"INSPECTQ_{name.upper()}"] = str(value)
    return env


def _redis_ready(config: StackConfig) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(redis.Redis.from_url(config.settings.redis_url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    return check


def _worker_ready(config: StackConfig) -> Callable[[], bool]:
    app = make_celery(config.settings)

    def check() -> bool:
        try:
            return bool(app.control.ping(timeout=1.0))
        except Exception:  # the broker may not answer yet while the worker boots
            return False

    return check


def _index_ready(config: StackConfig) -> Callable[[], bool]:
    """The indexer has migrated the results index: a listing answers."""
    index = ResultsIndex.from_settings(config.settings)

    def check() -> bool:
        try:
            index.list_jobs("-", JobFilter(), 1)
        except Exception:  # unreachable, or its tables are not there yet
            return False
        return True

    return check


def services(config: StackConfig) -> dict[str, procs.Service]:
    """Every service the stack can start, by name."""
    settings = config.settings
    app_env = settings_env(settings)
    triton_ready = f"http://127.0.0.1:{config.triton_http_port}/v2/health/ready"
    redis_server = shutil.which("redis-server") or "redis-server"
    s3_plan = seaweed.plan(
        config.var_dir / "s3",
        settings.s3_access_key_id,
        settings.s3_secret_access_key.get_secret_value(),
        s3_port=config.s3_port,
    )
    return {
        "redis": procs.Service(
            name="redis",
            argv=[redis_server, "--bind", "127.0.0.1", "--port", str(config.redis_port),
                  "--save", "", "--appendonly", "no"],
            ready=_redis_ready(config),
            ready_timeout_s=20,
        ),
        "s3": procs.Service(
            name="s3",
            argv=s3_plan.argv,
            ready=lambda: port_open(config.s3_port),
            ready_timeout_s=60,
        ),
        "triton": procs.Service(
            name="triton",
            argv=[str(config.model_python), "-m", "triton_models.serve",
                  "--http-port", str(config.triton_http_port),
                  "--grpc-port", str(config.triton_grpc_port),
                  "--metrics-port", str(config.triton_metrics_port)],
            ready=lambda: http_ok(triton_ready),
            cwd=REPO,
            ready_timeout_s=180,
        ),
        "worker": procs.Service(
            name="worker",
            argv=[venv_bin("celery"), "-A", "workers.main", "worker", "-Q", WORKER_QUEUES,
                  "--concurrency", str(config.worker_concurrency), "-O", "fair",
                  "--loglevel", "INFO", "--hostname", "inspectq-local@%h"],
            ready=_worker_ready(config),
            cwd=REPO,
            # SIGTERM: wait INSPECTQ_WORKER_SHUTDOWN_GRACE_S for the running job, then hand
            # its message back to the queue (Celery's soft shutdown).
            env={**app_env, "REMAP_SIGTERM": "SIGQUIT"},
            ready_timeout_s=90,
            stop_timeout_s=settings.worker_shutdown_grace_s + 15,
        ),
        # The periodic reconciler (re-enqueues accepted jobs whose messages were lost).
        "beat": procs.Service(
            name="beat",
            argv=[venv_bin("celery"), "-A", "workers.main", "beat", "--loglevel", "INFO",
                  "--schedule", str(config.var_dir / "run" / "celerybeat-schedule")],
            ready=lambda: True,
            cwd=REPO,
            env=app_env,
            ready_timeout_s=10,
        ),
        # Ended jobs into the results index (SQL), partitions, retention.
        "indexer": procs.Service(
            name="indexer",
            argv=[venv_bin("inspectq"), "index", "run"],
            ready=_index_ready(config),
            cwd=REPO,
            env=app_env,
            ready_timeout_s=60,
        ),
        "api": procs.Service(
            name="api",
            argv=[venv_bin("gunicorn"), "--config", str(REPO / "api" / "gunicorn.conf.py"),
                  "--bind", f"127.0.0.1:{config.api_port}",
                  "--workers", str(config.api_workers), "api.app:create_app()"],
            ready=lambda: http_ok(f"{config.api_url}/healthz"),
            cwd=REPO,
            env=app_env,
            ready_timeout_s=60,
        ),
    }


def _already_serving(name: str, config: StackConfig) -> bool:
    """True when something not started by us already provides the service."""
    if name == "redis":
        return _redis_ready(config)()
    if name == "s3":
        return port_open(config.s3_port)
    if name == "triton":
        return http_ok(f"http://127.0.0.1:{config.triton_http_port}/v2/health/ready")
    return False


def up(config: StackConfig, log: Callable[[str], None] = print) -> None:
    """Start what is missing, in order; return once the API reports ready."""
    table = services(config)
    for name in ORDER:
        if procs.running_pid(config.dirs, name) is not None:
            log(f"  {name:<7} already running (ours)")
            continue
        if _already_serving(name, config):
            log(f"  {name:<7} already serving; using it")
            continue
        if name == "redis" and not shutil.which("redis-server"):
            raise RuntimeError(
                "Redis is not running on "
                f"{config.settings.redis_url} and redis-server is not installed: "
                "`apt-get install -y redis-server`, or set INSPECTQ_REDIS_URL"
            )
        if name == "triton" and not config.model_python.exists():
            raise RuntimeError(f"{config.model_python} is missing: run `make venv` first")
        log(f"  {name:<7} starting (log: {config.dirs.log_file(name)})")
        pid = procs.start(table[name], config.dirs)
        if name == "s3":
            ObjectStore(config.settings).ensure_bucket()
        log(f"  {name:<7} ready (pid {pid})")
    ready_url = f"{config.api_url}/readyz"
    wait_until(lambda: http_ok(ready_url), 60, f"{ready_url}")
    log(f"  stack ready: {config.api_url}  (logs: {config.dirs.logs})")


def down(config: StackConfig, log: Callable[[str], None] = print) -> None:
    """Stop, in reverse order, exactly the processes ``up`` started."""
    table = services(config)
    for name in reversed(ORDER):
        if procs.stop(name, config.dirs, table[name].stop_timeout_s):
            log(f"  {name:<7} stopped")
