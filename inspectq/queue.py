"""The Celery application both sides share: the API sends, the workers consume.

Messages carry ids and nothing else: an inspection a job id (the image stays in S3), the
alert tasks an alert id, an event and a channel (the event waits in Redis). Every message
leaves through :func:`_send`. JSON is the only accepted
content type, so a pickled message put on the queue by hand is refused, never executed.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery

from inspectq.config import Settings
from inspectq.jobs import ImageRef
from inspectq.keyspace import NOTIFY_QUEUE, QUEUE, UNACKED
from inspectq.tiling import tiles_along

INSPECT_TASK = "inspectq.inspect"
RECONCILE_TASK = "inspectq.reconcile"
#: On NOTIFY_QUEUE: write an alert event to the index and queue its notifications; send one
#: notification on one channel; re-send alert events whose message was lost (beat).
ALERT_EVENT_TASK = "inspectq.alert-event"
NOTIFY_TASK = "inspectq.notify"
ALERT_SWEEP_TASK = "inspectq.alert-sweep"
#: What a worker consumes (``celery worker -Q``): inspections and the alert work.
WORKER_QUEUES = f"{QUEUE},{NOTIFY_QUEUE}"


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app: enough to send (the API, the ops commands); the workers add
    their tasks to it (``workers.app``). Settings for long inference jobs, and why:

    * ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked only after its
      job is recorded, and a worker killed mid-job hands it back: at-least-once delivery.
    * ``worker_prefetch_multiplier=1``: a worker holds one message beyond the one it runs, so
      a slow job never strands a backlog behind it (fair dispatch).
    * ``visibility_timeout`` above the hard time limit: Redis redelivers an unacked message
      only after this long, so a job still running is never handed to a second worker.
    """
    app = Celery("inspectq", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


@dataclass(frozen=True)
class TimeLimits:
    """A job's own soft and hard time limits (Celery ``soft_time_limit``/``time_limit``).
    They count from the moment a worker starts the job, never the time it waited queued."""

    soft_s: float
    hard_s: float

    def doubled(self, cap_s: float) -> TimeLimits:
        """Twice the time (for a retry after a timeout), with the hard limit at most
        ``cap_s`` and the gap between the two kept."""
        gap = self.hard_s - self.soft_s
        hard = min(cap_s, self.hard_s + self.soft_s)
        return TimeLimits(soft_s=max(1.0, hard - gap), hard_s=hard)


def time_limits(settings: Settings, image: ImageRef) -> TimeLimits:
    """Limits that follow the work: the settings' limits for one tile, plus
    ``task_time_per_tile_s`` for every further tile, the hard limit kept below the
    visibility timeout (or a job still running would be handed to a second worker)."""
    soft, hard = settings.task_soft_time_limit_s, settings.task_time_limit_s
    if image.width is not None and image.height is not None:
        tiles = (tiles_along(image.width, settings.tile_size, settings.tile_stride)
                 * tiles_along(image.height, settings.tile_size, settings.tile_stride))
        extra = (tiles - 1) * settings.task_time_per_tile_s
        cap = max_hard_limit_s(settings)
        hard = min(cap, hard + extra)
        soft = max(1.0, min(soft + extra, hard - (settings.task_time_limit_s - soft)))
    return TimeLimits(soft_s=round(soft, 1), hard_s=round(hard, 1))


def max_hard_limit_s(settings: Settings) -> float:
    """The longest a job may run: a margin below the visibility timeout."""
    return max(float(settings.task_time_limit_s), settings.visibility_timeout_s - 30.0)


def enqueue_inspection(app: Celery, job_id: str, limits: TimeLimits | None = None) -> None:
    """Put one job on the queue by name, so nothing that sends imports worker code. The
    message carries the job id and nothing else; ``limits`` (from :func:`time_limits`)
    travel in its headers, the app's defaults apply without them."""
    options = {} if limits is None else {"soft_time_limit": limits.soft_s,
                                         "time_limit": limits.hard_s}
    _send(app, INSPECT_TASK, [job_id], QUEUE, **options)


def enqueue_alert_event(app: Celery, alert_id: str, event: str) -> None:
    """Hand an alert's "opened" or "resolved" event (stored in Redis by the monitor) to the
    notify queue: into the index, and one notification per channel."""
    _send(app, ALERT_EVENT_TASK, [alert_id, event], NOTIFY_QUEUE)


def enqueue_notification(app: Celery, alert_id: str, event: str, channel: str) -> None:
    """One notification: the alert's event on one channel."""
    _send(app, NOTIFY_TASK, [alert_id, event, channel], NOTIFY_QUEUE)


def _send(app: Celery, task: str, args: list[str], queue: str, **options: float) -> None:
    """The one place a message leaves: by task name, so nothing that sends imports worker
    code."""
    app.send_task(task, args=args, queue=queue, **options)


def pending_count(redis_client: redis.Redis) -> int:
    """Queued + delivered-but-unacked messages, read from the broker's own structures."""
    pipe = redis_client.pipeline(transaction=False)
    pipe.llen(QUEUE)
    pipe.hlen(UNACKED)
    queued, in_flight = pipe.execute()
    return int(queued) + int(in_flight)


def request_alert_sweep(app: Celery) -> None:
    """Ask a worker to hand on alert events whose messages were lost or are late."""
    _send(app, ALERT_SWEEP_TASK, [], NOTIFY_QUEUE)
