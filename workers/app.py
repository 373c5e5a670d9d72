"""The workers' Celery app: :func:`inspectq.queue.make_celery` plus the tasks and signals.

The tasks:

* ``inspectq.inspect`` (one argument, the job id): :func:`workers.tasks.inspect_job`;
* ``inspectq.reconcile`` (no argument): :func:`workers.reconcile.reconcile`, run every
  ``reconcile_interval_s`` by Celery beat (``celery -A workers.main beat``);
* on the ``inspectq-notify`` queue (a worker consumes it with ``-Q inspectq,inspectq-notify``):
  ``inspectq.alert-event``, ``inspectq.notify`` and ``inspectq.alert-sweep`` (beat, every
  ``reconcile_interval_s``), see :mod:`workers.alert_delivery`.

Clients (S3, Redis, Triton) are built lazily in the process that runs tasks, never in the
parent before the prefork pool forks; ``worker_process_init`` drops anything a child
inherited anyway.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery, Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown
from kombu.exceptions import OperationalError

from inspectq.config import Settings
from inspectq.jobs import JobError, is_job_id
from inspectq.keyspace import NOTIFY_QUEUE
from inspectq.queue import (
    ALERT_EVENT_TASK,
    ALERT_SWEEP_TASK,
    INSPECT_TASK,
    NOTIFY_TASK,
    RECONCILE_TASK,
    TimeLimits,
    make_celery,
)
from inspectq.storage import StorageUnavailable
from workers.alert_delivery import AlertDelivery, longest_delay_s
from workers.reconcile import reconcile
from workers.services import Services, build_services
from workers.tasks import RetryLater, inspect_job

log = logging.getLogger(__name__)

#: Errors that mean a shared service is unreachable, not that the job is bad.
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, OperationalError, StorageUnavailable)


class ProcessServices:
    """Builds :class:`Services` on first use in the current process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._services: Services | None = None

    def get(self) -> Services:
        if self._services is None:
            self._services = build_services(self._settings)
        return self._services

    def drop(self) -> None:
        """Forget the clients without closing them (they may belong to the parent)."""
        self._services = None

    def close(self) -> None:
        if self._services is not None:
            self._services.model.close()
            self._services = None


def create_app(settings: Settings) -> Celery:
    """The worker app for ``settings``; see the module docstring."""
    app = make_celery(settings)
    app.conf.update(
        # On SIGTERM with REMAP_SIGTERM=SIGQUIT: wait this long for the running job, then
        # cancel it; acks_late leaves its message unacked, so it goes back to the queue.
        worker_soft_shutdown_timeout=settings.worker_shutdown_grace_s,
        worker_enable_soft_shutdown_on_idle=False,
        # A worker that died with a job (node lost) leaves its message unacked in Redis;
        # kombu hands it out again once it is older than the visibility timeout, checked
        # on this sweep (kombu's default is every ~100 s).
        broker_transport_options={
            **app.conf.broker_transport_options,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        beat_schedule={
            "reconcile": {
                "task": RECONCILE_TASK,
                "schedule": float(settings.reconcile_interval_s),
                "options": {"expires": float(settings.reconcile_interval_s)},
            },
            "alert-sweep": {
                "task": ALERT_SWEEP_TASK,
                "schedule": float(settings.reconcile_interval_s),
                "options": {"expires": float(settings.reconcile_interval_s),
                            "queue": NOTIFY_QUEUE},
            },
        },
    )
    services = ProcessServices(settings)
    current: list[AlertDelivery] = []

    def delivery() -> AlertDelivery:
        """The notify queue's work over this process's services (built again with them)."""
        built = services.get()
        if not current or current[0].services is not built:
            current[:] = [AlertDelivery(built, app)]
        return current[0]

    class InspectTask(Task):  # type: ignore[misc]
        def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict,
                       einfo: object) -> None:
            """An exception escaped the task, or the hard time limit killed it (Celery
            calls this in the parent process then): record the failure, so the job does
            not stay ``processing`` with its message already acked."""
            job_id = str(args[0]) if args else ""
            if not is_job_id(job_id):
                return
            if isinstance(exc, _OUTAGES):
                # Redis (the broker too) or S3 is down: the message was not acked, so it is
                # redelivered once they are back. Failing the job now would be wrong.
                log.warning("job %s: %s; left for redelivery", job_id, exc)
                return
            code = "timeout" if isinstance(exc, TimeLimitExceeded) else "internal_error"
            try:
                failed = services.get().jobs.finish(
                    job_id, error=JobError(code=code, message=f"{type(exc).__name__}: {exc}")
                )
                services.get().line_health.observe(failed)
            except Exception:
                log.exception("job %s: could not record its failure (%s)", job_id, code)

    @app.task(name=INSPECT_TASK, bind=True, base=InspectTask, shared=False,
              max_retries=settings.max_retries)
    def inspect(task: Task, job_id: str) -> None:
        hard, soft = task.request.timelimit or (None, None)  # this message's own limits
        limits = TimeLimits(soft_s=soft or settings.task_soft_time_limit_s,
                            hard_s=hard or settings.task_time_limit_s)
        try:
            inspect_job(services.get(), job_id, retries=task.request.retries, limits=limits)
        except RetryLater as later:
            more_time = {} if later.limits is None else {
                "soft_time_limit": later.limits.soft_s, "time_limit": later.limits.hard_s}
            raise task.retry(countdown=later.countdown_s, **more_time) from later

    @app.task(name=RECONCILE_TASK, shared=False)
    def reconcile_task() -> dict[str, int]:
        return reconcile(services.get(), app).counts()

    @app.task(name=ALERT_EVENT_TASK, bind=True, shared=False, max_retries=None)
    def alert_event(task: Task, alert_id: str, event: str, attempt: int = 0) -> None:
        try:
            countdown = delivery().handle_event(alert_id, event, attempt)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning("alert %s: Redis unreachable (%s); %s event retried", alert_id, error,
                        event)
            countdown = longest_delay_s(settings)
        if countdown is not None:
            raise task.retry(countdown=countdown, kwargs={"attempt": attempt + 1})

    @app.task(name=NOTIFY_TASK, bind=True, shared=False, max_retries=None)
    def notify(task: Task, alert_id: str, event: str, channel: str, attempt: int = 0) -> str:
        try:
            outcome = delivery().notify(alert_id, event, channel, attempt)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning("alert %s: Redis unreachable (%s); %s on %s retried", alert_id, error,
                        event, channel)
            raise task.retry(countdown=longest_delay_s(settings),
                             kwargs={"attempt": attempt}) from error
        if outcome.countdown is not None:
            raise task.retry(countdown=outcome.countdown, kwargs={"attempt": outcome.attempts})
        return outcome.kind

    @app.task(name=ALERT_SWEEP_TASK, shared=False)
    def alert_sweep() -> int:
        return delivery().sweep()

    def on_process_init(**_: object) -> None:
        services.drop()

    def on_process_shutdown(**_: object) -> None:
        services.close()

    worker_process_init.connect(on_process_init, weak=False)
    worker_process_shutdown.connect(on_process_shutdown, weak=False)
    return app
