"""Dead letters: jobs whose message kept coming back (a worker died on it every time).

Such a job is moved to ``failed`` with ``error.code = "poison_message"`` and listed in two
places: the Redis list ``keyspace.DEADLETTER_LIST`` (newest first, for a quick look) and the
durable ``deadletter/<id>.json`` in S3 (what ``inspectq deadletter list|replay`` reads).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from inspectq import keyspace
from inspectq.backends import Backends
from inspectq.jobs import JobError, JobRecord, utc_now
from inspectq.queue import enqueue_inspection, time_limits


def dead_letter(backends: Backends, record: JobRecord, deliveries: int) -> JobRecord:
    """Fail the job as a poison message and file it where ops look."""
    message = (f"delivered {deliveries} times without finishing (max_deliveries="
               f"{backends.settings.max_deliveries}); the worker likely crashed on it")
    final = backends.jobs.finish(record.id, error=JobError(code="poison_message",
                                                           message=message))
    entry = {"id": record.id, "line": record.line, "tenant": record.tenant,
             "deliveries": deliveries, "reason": message, "dead_at": utc_now()}
    backends.store.put_json(keyspace.deadletter_entry(record.id), entry)
    pipe = backends.redis.pipeline()
    pipe.lrem(keyspace.DEADLETTER_LIST, 0, record.id)
    pipe.lpush(keyspace.DEADLETTER_LIST, record.id)
    pipe.execute()
    return final


def list_dead(backends: Backends) -> list[dict[str, Any]]:
    """Every dead-lettered job, from S3 (it survives a Redis flush)."""
    entries = []
    for key in backends.store.list_keys(keyspace.DEADLETTER_PREFIX):
        entry = backends.store.get_json(key)
        if entry is not None:
            entries.append(entry)
    return entries


def replay(backends: Backends, queue: Celery, job_id: str) -> bool:
    """Reopen a dead-lettered job and send it to ``queue`` again with fresh delivery counts.

    False when the job is not dead-lettered or no longer failed.
    """
    key = keyspace.deadletter_entry(job_id)
    if backends.store.get_json(key) is None:
        return False
    reopened = backends.jobs.reopen(job_id)
    if reopened is None:
        return False
    for counter in backends.redis.scan_iter(keyspace.deliveries_pattern(job_id)):
        backends.redis.delete(counter)
    backends.store.delete(key)
    backends.redis.lrem(keyspace.DEADLETTER_LIST, 0, job_id)
    enqueue_inspection(queue, job_id, time_limits(backends.settings, reopened.image))
    return True
