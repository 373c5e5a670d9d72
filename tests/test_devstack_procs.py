"""The stack supervisor starts real processes, stops exactly those, and reports failures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from devstack import procs
from devstack.ports import free_port, port_open


def _http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_start_waits_until_ready_and_stop_ends_the_process_group(tmp_path: Path) -> None:
    dirs = procs.RunDirs(tmp_path)
    port = free_port()
    service = procs.Service("web", _http_server(port), ready=lambda: port_open(port))
    pid = procs.start(service, dirs)
    assert port_open(port)
    assert procs.running_pid(dirs, "web") == pid
    assert procs.stop("web", dirs, timeout_s=10)
    assert not port_open(port)
    assert not dirs.pid_file("web").exists()
    # Stopping again does nothing: only what we started, once.
    assert not procs.stop("web", dirs)


def test_stop_leaves_processes_it_did_not_start(tmp_path: Path) -> None:
    dirs = procs.RunDirs(tmp_path)
    port = free_port()
    stranger = subprocess.Popen(_http_server(port))
    try:
        deadline = time.monotonic() + 10
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not procs.stop("web", dirs)
        assert stranger.poll() is None and port_open(port)
    finally:
        stranger.terminate()
        stranger.wait(5)


def test_a_service_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    dirs = procs.RunDirs(tmp_path)
    service = procs.Service(
        "broken",
        [sys.executable, "-c", "import sys; print('bad config: no model'); sys.exit(3)"],
        ready=lambda: False,
    )
    with pytest.raises(RuntimeError, match="exited with code 3") as caught:
        procs.start(service, dirs)
    assert "bad config: no model" in str(caught.value)
    assert procs.running_pid(dirs, "broken") is None


def test_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    dirs = procs.RunDirs(tmp_path)
    dirs.pids.mkdir(parents=True)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    procs._write_pid_file(dirs.pid_file("web"), finished.pid)
    assert procs.running_pid(dirs, "web") is None
    assert not dirs.pid_file("web").exists()
    assert not procs.stop("web", dirs)


def test_a_reused_pid_is_not_ours_and_is_never_signalled(tmp_path: Path) -> None:
    """The PID in the file now belongs to another live process (PIDs are reused): the
    stack must not think its service runs, and `stop` must not kill that process."""
    dirs = procs.RunDirs(tmp_path)
    dirs.pids.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        # What our service's file would say if it had started earlier under the same PID.
        earlier = psutil.Process(stranger.pid).create_time() - 3600
        dirs.pid_file("web").write_text(f"{stranger.pid} {earlier}")
        assert procs.running_pid(dirs, "web") is None
        assert not procs.stop("web", dirs, timeout_s=1)
        assert stranger.poll() is None, "stop() killed a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()
