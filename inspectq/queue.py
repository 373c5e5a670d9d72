"""The Celery application both sides share: the API sends, the workers consume.

Messages carry a job id and nothing else; the image stays in S3. JSON is the only accepted
content type, so a pickled message put on the queue by hand is refused, never executed.
"""

from __future__ import annotations

import redis
from celery import Celery

from inspectq.config import Settings
from inspectq.keyspace import QUEUE, UNACKED

INSPECT_TASK = "inspectq.inspect"
RECONCILE_TASK = "inspectq.reconcile"


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


def enqueue_inspection(app: Celery, job_id: str) -> None:
    """Put one job on the queue by name, so nothing that sends imports worker code. The
    message carries the job id and nothing else."""
    app.send_task(INSPECT_TASK, args=[job_id], queue=QUEUE)


def pending_count(redis_client: redis.Redis) -> int:
    """Queued + delivered-but-unacked messages, read from the broker's own structures."""
    pipe = redis_client.pipeline(transaction=False)
    pipe.llen(QUEUE)
    pipe.hlen(UNACKED)
    queued, in_flight = pipe.execute()
    return int(queued) + int(in_flight)
