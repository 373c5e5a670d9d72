"""Real ``celery worker`` processes against real Redis, S3 and Triton: delivery, crashes,
shutdown, outages, and the JSON-only rule."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from kombu import Connection

from inspectq.config import Settings
from inspectq.jobs import JobRecord, Status
from inspectq.keyspace import QUEUE, keys_for
from inspectq.queue import INSPECT_TASK, enqueue_inspection
from tests.workers.conftest import (
    CLOSED_PORT_URL,
    WorkerProcess,
    accepted_seconds_ago,
    job_status,
    png,
    slow_image,
    strip_with_scratch,
    submit,
    wait_for,
)
from tests.workers.triton_server import TritonProcess
from workers.app import create_app
from workers.reconcile import reconcile
from workers.services import Services

StartWorker = Callable[..., WorkerProcess]


class TouchFile:
    """Unpickling this creates a file: proof that a pickled message was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


def _enqueue_then_wait_inside_triton(services: Services, settings: Settings,
                                     triton: TritonProcess, *job_ids: str) -> None:
    """Enqueue ``job_ids`` and return once the first (a slow image: the fixture model
    sleeps 3 s on it) is processing and its request has started inside Triton."""
    started = triton.slow_requests()
    app = create_app(settings)
    for job_id in job_ids:
        enqueue_inspection(app, job_id)
    wait_for(lambda: job_status(services.jobs, job_ids[0]) is Status.PROCESSING, 20,
             "processing")
    wait_for(lambda: triton.slow_requests() > started, 20, "the request inside Triton")


def test_pickled_message_is_refused_and_the_worker_keeps_working(
    services: Services, settings: Settings, start_worker: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker(settings)
    marker = tmp_path / "pickle-was-executed"
    with Connection(settings.effective_broker_url) as connection:
        connection.Producer().publish(
            TouchFile(marker), serializer="pickle", routing_key=QUEUE, exchange="",
            headers={"lang": "py", "task": INSPECT_TASK, "id": str(uuid.uuid4()),
                     "retries": 0, "argsrepr": "()", "kwargsrepr": "{}"},
        )
    job_id = submit(services, png(strip_with_scratch(seed=21)))
    enqueue_inspection(create_app(settings), job_id)
    wait_for(lambda: job_status(services.jobs, job_id) is Status.DONE, 30, "job done")
    assert not marker.exists()
    assert worker.process.poll() is None
    assert "application/x-python-serialize" in worker.log()  # refused, and said so
    assert services.redis.llen(QUEUE) == 0  # the bad message was not left to loop


def test_sigkill_mid_inference_is_redelivered_and_completes_once(
    services: Services, settings: Settings, start_worker: StartWorker,
    triton: TritonProcess,
) -> None:
    worker = start_worker(settings)
    job_id = submit(services, png(slow_image(seed=1)))
    _enqueue_then_wait_inside_triton(services, settings, triton, job_id)
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)  # the pool process running the job dies
    done = wait_for(lambda: services.jobs.get(job_id).status.terminal and
                    services.jobs.get(job_id), 30, "job to end after redelivery")
    assert done.status is Status.DONE, done.error
    assert done.result.decision == "PASS"
    assert int(services.redis.get(f"inspectq:deliveries:{job_id}:0")) == 2
    assert worker.process.poll() is None


def test_whole_worker_killed_then_another_worker_finishes_the_job(
    services: Services, settings: Settings, start_worker: StartWorker,
    triton: TritonProcess,
) -> None:
    """The node dies: nobody requeues the message; Redis redelivers it after the
    visibility timeout, and a fresh worker completes the job."""
    short = settings.model_copy(update={
        "task_soft_time_limit_s": 6, "task_time_limit_s": 7, "visibility_timeout_s": 8})
    first = start_worker(short)
    job_id = submit(services, png(slow_image(seed=2)))
    _enqueue_then_wait_inside_triton(services, short, triton, job_id)
    first.kill()
    start_worker(short)
    done = wait_for(lambda: services.jobs.get(job_id).status.terminal and
                    services.jobs.get(job_id), 40, "job to end on the second worker")
    assert done.status is Status.DONE, done.error


def test_sigterm_hands_the_running_job_back_within_the_grace_period(
    services: Services, settings: Settings, start_worker: StartWorker,
    triton: TritonProcess,
) -> None:
    graced = settings.model_copy(update={"worker_shutdown_grace_s": 1.0})
    worker = start_worker(graced, extra_env={"REMAP_SIGTERM": "SIGQUIT"})
    job_id = submit(services, png(slow_image(seed=3)))
    _enqueue_then_wait_inside_triton(services, graced, triton, job_id)
    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=15)
    assert time.monotonic() - stopped_at < 10
    assert job_status(services.jobs, job_id) is not Status.DONE  # it did not finish...
    assert services.redis.llen(QUEUE) == 1  # ...it went back to the queue at once
    start_worker(settings)
    wait_for(lambda: job_status(services.jobs, job_id) is Status.DONE, 30, "job done")


def test_a_retry_held_by_a_worker_that_dies_still_runs(
    services: Services, settings: Settings, start_worker: StartWorker
) -> None:
    """Kill point: the job is `retrying` and its delayed retry (a message with a countdown)
    lives in the worker when the whole worker is SIGKILLed. Redis hands the unacked retry
    out again after the visibility timeout, and a fresh worker finishes the job."""
    short = {"task_soft_time_limit_s": 6, "task_time_limit_s": 7, "visibility_timeout_s": 8,
             "retry_backoff_max_s": 20, "max_retries": 8}
    down = settings.model_copy(update={"triton_url": CLOSED_PORT_URL, **short})
    doomed = start_worker(down)
    job_id = submit(services, png(strip_with_scratch(seed=24)))
    enqueue_inspection(create_app(down), job_id)
    wait_for(lambda: job_status(services.jobs, job_id) is Status.RETRYING, 20, "retrying")
    wait_for(lambda: services.redis.hlen("unacked") == 1 and services.redis.llen(QUEUE) == 0,
             20, "the retry held by the worker")
    doomed.kill()
    start_worker(settings.model_copy(update=short))  # Triton is up again
    done = wait_for(lambda: (r := services.jobs.get(job_id)).status.terminal and r, 60,
                    "job to end on the new worker")
    assert done.status is Status.DONE, done.error


def test_a_worker_that_dies_strands_no_second_message(
    services: Services, settings: Settings, start_worker: StartWorker,
    triton: TritonProcess,
) -> None:
    """Kill point: the worker runs one job while the next waits. With prefetch 1 and fair
    dispatch the waiting message stays in the queue (a worker holds no message it is not
    running), so a SIGKILL of the whole worker strands nothing: both jobs end done."""
    short = settings.model_copy(update={
        "task_soft_time_limit_s": 6, "task_time_limit_s": 7, "visibility_timeout_s": 8})
    doomed = start_worker(short)  # one pool process
    running = submit(services, png(slow_image(seed=6)))
    waiting = submit(services, png(strip_with_scratch(seed=25)))
    _enqueue_then_wait_inside_triton(services, short, triton, running, waiting)
    assert services.redis.hlen("unacked") == 1 and services.redis.llen(QUEUE) == 1
    assert job_status(services.jobs, waiting) is Status.QUEUED
    doomed.kill()
    start_worker(short)
    for job_id in (running, waiting):
        done = wait_for(lambda job_id=job_id: (r := services.jobs.get(job_id)).status.terminal
                        and r, 60, "job to end on the new worker")
        assert done.status is Status.DONE, done.error


def test_a_kill_between_the_outcome_write_and_the_ack_keeps_the_one_outcome(
    services: Services, settings: Settings, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Kill point: the outcome is in S3 but the message is not acked yet when the pool
    process dies. The broker hands the message out again; that delivery finds the job
    done and leaves it so: one outcome (the recorded one), no second run, nothing queued."""
    paused = tmp_path / "outcome-written"
    worker = start_worker(settings, app="tests.workers.paused_worker",
                          extra_env={"INSPECTQ_TEST_PAUSED_FILE": str(paused)})
    job_id = submit(services, png(strip_with_scratch(seed=26)))
    enqueue_inspection(create_app(settings), job_id)
    wait_for(paused.exists, 30, "the outcome written, the ack not yet sent")
    recorded = services.store.get(keys_for(job_id).result)
    assert recorded is not None
    assert services.redis.hlen("unacked") == 1  # the broker still holds the message
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: f"job {job_id} already done; duplicate delivery ignored" in worker.log(),
             30, "the message delivered again")
    wait_for(lambda: services.redis.hlen("unacked") == 0 and services.redis.llen(QUEUE) == 0,
             30, "the message acked")
    assert services.store.get(keys_for(job_id).result) == recorded  # never rewritten
    final = services.jobs.get(job_id)
    assert final.status is Status.DONE and final.result.decision == "REJECT"
    assert final.to_json().encode() == recorded


def test_triton_down_job_goes_retrying_then_failed(
    services: Services, settings: Settings, start_worker: StartWorker
) -> None:
    down = settings.model_copy(update={"triton_url": CLOSED_PORT_URL, "max_retries": 2})
    start_worker(down)
    job_id = submit(services, png(strip_with_scratch(seed=22)))
    enqueue_inspection(create_app(down), job_id)
    retrying = wait_for(lambda: (r := services.jobs.get(job_id)).status is Status.RETRYING
                        and r, 20, "retrying")
    assert retrying.retry.reason == "triton_unavailable"
    failed = wait_for(lambda: (r := services.jobs.get(job_id)).status is Status.FAILED and r,
                      30, "failed")
    assert failed.error.code == "triton_unavailable" and "2 retries" in failed.error.message


def test_redis_flush_is_reconciled_and_the_worker_finishes_the_job(
    services: Services, settings: Settings, start_worker: StartWorker,
    redis_client: redis.Redis,
) -> None:
    app = create_app(settings)
    job_id = submit(services, png(strip_with_scratch(seed=23)))
    accepted_seconds_ago(services, job_id, 60)  # past the reconciler's enqueue grace
    enqueue_inspection(app, job_id)
    redis_client.flushdb()  # the queue and the job record are gone; S3 still knows it
    assert services.jobs.cached([job_id]) == {}

    report = reconcile(services, app)
    assert report.requeued == [job_id]
    assert services.jobs.get(job_id).status is Status.QUEUED  # back in Redis
    assert reconcile(services, app).requeued == []  # no double enqueue
    assert redis_client.llen(QUEUE) == 1

    start_worker(settings)
    wait_for(lambda: job_status(services.jobs, job_id) is Status.DONE, 30, "job done")
    assert reconcile(services, app).closed == [job_id]  # the finished job's entry is swept
    assert job_id not in services.jobs.pending_job_ids()


def _slow_job_under(services: Services, settings: Settings, start_worker: StartWorker,
                    seed: int, soft_s: int, hard_s: int, visibility_s: int) -> str:
    """A job the model takes 3 s on, run by a worker with these time limits."""
    limited = settings.model_copy(update={
        "task_soft_time_limit_s": soft_s, "task_time_limit_s": hard_s,
        "visibility_timeout_s": visibility_s})
    start_worker(limited)
    job_id = submit(services, png(slow_image(seed=seed)))
    enqueue_inspection(create_app(limited), job_id)
    return job_id


def _ended(services: Services, job_id: str, timeout_s: float) -> JobRecord:
    return wait_for(lambda: (r := services.jobs.get(job_id)).status.terminal and r, timeout_s,
                    "job to end")


def test_a_slow_job_on_a_healthy_system_retries_with_more_time(
    services: Services, settings: Settings, start_worker: StartWorker
) -> None:
    """Busy, not broken: a job past its soft limit runs again with twice the time."""
    job_id = _slow_job_under(services, settings, start_worker, 5, 2, 3, 60)
    wait_for(lambda: (r := services.jobs.get(job_id)).status is Status.RETRYING and r, 20,
             "the timed-out job to be retrying")
    assert services.jobs.get(job_id).retry.reason == "timeout"
    done = _ended(services, job_id, 30)
    assert done.status is Status.DONE, done.error


def test_job_past_its_time_limit_fails_with_timeout(
    services: Services, settings: Settings, start_worker: StartWorker
) -> None:
    # No room for more time: the visibility timeout caps how long a job may run.
    failed = _ended(services, _slow_job_under(services, settings, start_worker, 4, 1, 2, 3), 20)
    assert failed.status is Status.FAILED and failed.error.code == "timeout"
