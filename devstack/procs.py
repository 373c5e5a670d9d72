"""Background processes with PID files: start what is missing, stop exactly what we started.

Each service runs in its own process group (``start_new_session``) so that stopping it
also stops its children (gunicorn and Celery fork workers; Triton starts stub processes).

A PID file holds the PID and the process's start time. PIDs are reused: after a reboot or a
long time, the PID in an old file may belong to an unrelated process, and signalling its
group would kill someone else's work. A PID whose start time differs is stale.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Service:
    """One long-running process of the local stack."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0


@dataclass(frozen=True)
class RunDirs:
    """Where the stack keeps PID files and logs (``var/run`` and ``var/log``)."""

    root: Path

    @property
    def pids(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None when there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _write_pid_file(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {_started_at(pid)}")


def running_pid(dirs: RunDirs, name: str) -> int | None:
    """The PID of a service we started that is still alive, else None. A stale file (its
    process gone, or its PID now another process's) is removed."""
    path = dirs.pid_file(name)
    if not path.exists():
        return None
    try:
        pid_text, started_text = path.read_text().split()
        pid, started = int(pid_text), float(started_text)
    except ValueError:
        path.unlink(missing_ok=True)
        return None
    if _alive(pid) and _started_at(pid) == started:
        return pid
    path.unlink(missing_ok=True)
    return None


def start(service: Service, dirs: RunDirs) -> int:
    """Start ``service`` in the background, log to ``var/log/<name>.log``, wait until ready."""
    dirs.pids.mkdir(parents=True, exist_ok=True)
    dirs.logs.mkdir(parents=True, exist_ok=True)
    log_path = dirs.log_file(service.name)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            service.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **service.env},
            cwd=service.cwd,
            start_new_session=True,
        )
    _write_pid_file(dirs.pid_file(service.name), proc.pid)
    deadline = time.monotonic() + service.ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            dirs.pid_file(service.name).unlink(missing_ok=True)
            raise RuntimeError(
                f"{service.name} exited with code {proc.returncode} while starting; "
                f"see {log_path}:\n{_tail(log_path)}"
            )
        if service.ready():
            return proc.pid
        time.sleep(0.3)
    stop(service.name, dirs, service.stop_timeout_s)
    raise TimeoutError(
        f"{service.name} was not ready after {service.ready_timeout_s:.0f}s; see {log_path}:\n"
        f"{_tail(log_path)}"
    )


def stop(name: str, dirs: RunDirs, timeout_s: float = 30.0) -> bool:
    """SIGTERM the service's process group, SIGKILL it after ``timeout_s``. True if it ran."""
    pid = running_pid(dirs, name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    dirs.pid_file(name).unlink(missing_ok=True)
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
