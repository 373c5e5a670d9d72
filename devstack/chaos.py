"""``make chaos``: a stream of uploads while the stack is hurt, then an account of every job.

While several clients upload images through the API, the run SIGKILLs a worker process in
the middle of its work, stops and restarts Triton, and flushes Redis (queue, job cache and
all). Then it waits and reads every accepted job back through the API: each must end
``done`` or ``failed`` with a reason; none may be lost; none may show two different results.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import requests
from tqdm import tqdm

from devstack import procs
from devstack.bench import bench_images
from devstack.client import ApiError, InspectqClient
from devstack.stack import (
    REPO,
    StackConfig,
    isolated_config,
    services,
    settings_env,
    venv_bin,
)
from inspectq import keyspace
from inspectq.storage import ObjectStore

#: The chaos stack's own Redis database.
REDIS_DB = 13


def stack_config(var_dir: Path) -> StackConfig:
    """A separate stack for the chaos run, with short limits, so that work held by a
    SIGKILLed worker comes back within the run."""
    return isolated_config(
        var_dir, REDIS_DB, s3_bucket="chaos",
        task_soft_time_limit_s=20, task_time_limit_s=30, visibility_timeout_s=45,
        max_retries=10, retry_backoff_max_s=8,
    )


@dataclass
class Ledger:
    """What the clients saw: accepted job ids and every result observed per job."""

    accepted: set[str] = field(default_factory=set)
    rejected_uploads: dict[str, int] = field(default_factory=dict)
    results: dict[str, list[str]] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)
    #: Jobs clients kept polling across the Redis flush: seconds from the flush to their end.
    polled_after_flush_s: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, job_id: str) -> None:
        with self.lock:
            self.accepted.add(job_id)

    def refuse(self, reason: str) -> None:
        with self.lock:
            self.rejected_uploads[reason] = self.rejected_uploads.get(reason, 0) + 1

    def observe(self, job: dict[str, Any]) -> None:
        """Record a terminal observation; a second, different one is a duplicated result."""
        outcome = json.dumps(
            {key: job.get(key) for key in ("status", "result", "error")}, sort_keys=True
        )
        with self.lock:
            seen = self.results.setdefault(job["id"], [])
            if outcome not in seen:
                seen.append(outcome)
            # Time to result by the job's own clock: accepted -> outcome recorded.
            self.latency_s.setdefault(
                job["id"], (_when(job["updated_at"]) - _when(job["created_at"])).total_seconds()
            )


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _log(message: str) -> None:
    tqdm.write(f"[chaos {time.strftime('%H:%M:%S')}] {message}")


def _pool_children(dirs: procs.RunDirs) -> list[int]:
    """PIDs of the Celery worker's pool processes (the children of the main process)."""
    main = procs.running_pid(dirs, "worker")
    if main is None:
        return []
    out = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def _reconcile(config: StackConfig) -> str:
    """Run the reconciler once, as ops would; return its last output line."""
    proc = subprocess.run(
        [venv_bin("inspectq"), "reconcile"],
        cwd=REPO, env={**os.environ, **settings_env(config.settings)},
        capture_output=True, text=True, check=False,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def faults(config: StackConfig, progress: Ledger, total: int, stop: threading.Event) -> None:
    """The scripted faults, each fired once the stream is under way."""
    table = services(config)

    def when_accepted(fraction: float) -> bool:
        while not stop.is_set() and len(progress.accepted) < fraction * total:
            time.sleep(0.1)
        return not stop.is_set()

    if when_accepted(0.15):
        children = _pool_children(config.dirs)
        if children:
            os.kill(children[0], signal.SIGKILL)
            _log(f"SIGKILL worker pool process {children[0]} (mid-job)")
    if when_accepted(0.30):
        main = procs.running_pid(config.dirs, "worker")
        if main is not None:
            os.killpg(main, signal.SIGKILL)
            config.dirs.pid_file("worker").unlink(missing_ok=True)
            _log(f"SIGKILL the whole worker (pid {main} and its pool); restarting it")
            procs.start(table["worker"], config.dirs)
    if when_accepted(0.45):
        procs.stop("triton", config.dirs)
        _log("Triton stopped; jobs now retry with backoff")
        time.sleep(8)
        procs.start(table["triton"], config.dirs)
        _log("Triton restarted")
    if when_accepted(0.65):
        poisoned = "j_" + secrets.token_urlsafe(16)
        ObjectStore(config.settings).put(keyspace.pending(poisoned),
                                         b'{"metadata": {"a": ' + b"[" * 300 + b"]" * 300)
        _log(f"unreadable record written at pending/{poisoned} (300 levels deep, truncated)")
        watched = [job_id for job_id in list(progress.accepted)[-400:]
                   if job_id not in progress.results][:POLLING_CLIENTS * 8]
        redis.Redis.from_url(config.settings.redis_url).flushdb()
        flushed_at = time.monotonic()
        _log(f"Redis FLUSHDB: queue, job cache and counters gone; {POLLING_CLIENTS} clients "
             f"keep polling {len(watched)} unfinished jobs")
        pollers = threading.Thread(target=_poll, args=(config, progress, watched, flushed_at))
        pollers.start()
        _log(f"reconciler (on demand): {_reconcile(config)}")
        pollers.join()


#: Clients that keep polling unfinished jobs across the Redis flush (each GET puts the job's
#: record back into Redis as `queued`: that must not make a lost job look alive).
POLLING_CLIENTS = 8


def _poll(config: StackConfig, ledger: Ledger, job_ids: list[str], flushed_at: float) -> None:
    """Poll each job about once a second until it ends; note how long after the flush."""
    key = config.settings.api_key.get_secret_value()

    def watch(ids: list[str]) -> None:
        client = InspectqClient(config.api_url, key)
        waiting = list(ids)
        deadline = flushed_at + 600
        while waiting and time.monotonic() < deadline:
            for job_id in list(waiting):
                try:
                    status = client.job(job_id)["status"]
                except (ApiError, requests.ConnectionError):
                    continue
                if status in ("done", "failed"):
                    waiting.remove(job_id)
                    with ledger.lock:
                        ledger.polled_after_flush_s[job_id] = time.monotonic() - flushed_at
            time.sleep(1.0)

    with ThreadPoolExecutor(max_workers=POLLING_CLIENTS) as pool:
        list(pool.map(watch, [job_ids[i::POLLING_CLIENTS] for i in range(POLLING_CLIENTS)]))


def _code(error: Exception) -> str:
    """A short reason for a refused or broken request, for the tally."""
    if isinstance(error, ApiError):
        body = error.body if isinstance(error.body, dict) else {}
        return f"{error.status} {body.get('error', {}).get('code', '')}".strip()
    return type(error).__name__


def run(config: StackConfig, images: int, clients: int, deadline_s: float
        ) -> tuple[str, bool]:
    """Upload ``images`` from ``clients`` threads while the faults fire; then long-poll every
    accepted job to its end (or ``deadline_s``) and read each once more. Returns the report
    and whether the promise held: nothing lost, stuck or duplicated."""
    pictures = bench_images(images)
    bodies = [p.png() for p in pictures]
    key = config.settings.api_key.get_secret_value()
    run_id = secrets.token_hex(4)
    local = threading.local()

    def api() -> InspectqClient:  # one HTTP session per thread
        if not hasattr(local, "client"):
            local.client = InspectqClient(config.api_url, key)
        return local.client

    ledger = Ledger()
    stop = threading.Event()
    chaos = threading.Thread(target=faults, args=(config, ledger, len(bodies), stop))
    chaos.start()
    started = time.monotonic()

    def upload(index: int) -> None:
        # A real uploader retries 429/503 (after Retry-After) and broken connections.
        for _attempt in range(120):
            try:
                accepted = api().submit(bodies[index], f"c{index}.png",
                                        idempotency_key=f"chaos-{run_id}-{index}", line="chaos")
                ledger.accept(accepted["id"])
                return
            except (ApiError, requests.ConnectionError) as error:
                ledger.refuse(_code(error))
                time.sleep(1.0)
        ledger.refuse("gave up")

    end_by = 0.0

    def wait_for(job_id: str) -> bool:
        while time.monotonic() < end_by:
            try:
                job = api().job(job_id, wait_s=min(30.0, max(1.0, end_by - time.monotonic())))
            except (ApiError, requests.ConnectionError):
                time.sleep(1.0)
                continue
            if job["status"] in ("done", "failed"):
                ledger.observe(job)
                return True
        return False

    try:
        with tqdm(total=len(bodies), desc=f"uploading, {clients} clients", unit="img") as bar, \
                ThreadPoolExecutor(max_workers=clients) as pool:
            for _ in pool.map(upload, range(len(bodies))):
                bar.update(1)
        end_by = time.monotonic() + deadline_s
        accepted = list(ledger.accepted)
        with tqdm(total=len(accepted), desc="waiting for results", unit="job") as bar, \
                ThreadPoolExecutor(max_workers=2 * clients) as pool:
            lost = set()
            for job_id, ended in zip(accepted, pool.map(wait_for, accepted), strict=True):
                bar.update(1)
                if not ended:
                    lost.add(job_id)
    finally:
        stop.set()
        chaos.join()
    # Read every ended job once more: a redelivered duplicate would show a second result.
    for job_id in list(ledger.results):
        ledger.observe(api().job(job_id))
    return summary(ledger, lost, len(bodies), time.monotonic() - started)


def summary(ledger: Ledger, lost: set[str], submitted: int, seconds: float
            ) -> tuple[str, bool]:
    done = failed = 0
    reasons: dict[str, int] = {}
    for seen in ledger.results.values():
        first = json.loads(seen[0])
        if first["status"] == "done":
            done += 1
        else:
            failed += 1
            code = (first.get("error") or {}).get("code", "unknown")
            reasons[code] = reasons.get(code, 0) + 1
    duplicated = sum(1 for seen in ledger.results.values() if len(seen) > 1)
    latencies = sorted(ledger.latency_s.values())

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0

    lines = [
        "",
        f"chaos run: {seconds:.0f}s",
        f"  submitted           {submitted}",
        f"  accepted            {len(ledger.accepted)}"
        f"   (uploads refused then retried: {ledger.rejected_uploads or 'none'})",
        f"  done                {done}",
        f"  failed              {failed}   {reasons or ''}",
        f"  lost                {len(lost) + (submitted - len(ledger.accepted))}",
        f"  duplicated results  {duplicated}",
        f"  time to result (s)  p50 {pct(0.50):.1f}  p95 {pct(0.95):.1f}  p99 {pct(0.99):.1f}"
        f"  (mean {statistics.fmean(latencies) if latencies else 0:.1f})",
    ]
    if ledger.polled_after_flush_s:
        after = sorted(ledger.polled_after_flush_s.values())
        lines.append(f"  polled across the Redis flush: {len(after)} jobs, ended "
                     f"{after[len(after) // 2]:.0f} s (p50) / {after[-1]:.0f} s (last) after it")
    held = not lost and submitted == len(ledger.accepted) and duplicated == 0
    lines.append("  promise held: nothing lost, stuck or duplicated" if held else
                 "  PROMISE BROKEN: jobs lost, stuck or duplicated (see above)")
    return "\n".join(lines), held
