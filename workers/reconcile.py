"""Put accepted jobs without an outcome back on the queue when their message was lost.

S3 knows every accepted job without an outcome (``pending/<id>`` markers, which finished
jobs keep until the reconciler sweeps them). The reconciler, every ``reconcile_interval_s``:

* **sweeps** the markers of finished jobs, in batches (one S3 request per 1,000 keys);

and re-enqueues:

* **lost** jobs: Redis no longer holds their record (flushed, restarted empty). The record
  is put back in Redis from S3 and the job enqueued again;
* **stale** jobs: Redis holds a ``queued``/``processing``/``retrying`` record that has not
  changed for longer than a job can legitimately sit still (``visibility_timeout_s`` +
  ``retry_backoff_max_s``) and no message for it is in the broker (neither the queue nor
  Celery's ``unacked`` hash). That is a job whose enqueue failed at ingest, or whose
  message was acked without an outcome being written.

A Redis ``SET NX`` guard keeps two reconcilers from enqueueing the same job in the same
visibility window; a duplicate delivery would be harmless anyway, since
``JobStore.finish`` keeps the first outcome.

Run on demand with ``inspectq reconcile``; Celery beat also runs it every
``reconcile_interval_s`` (see ``workers.app``).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from inspectq import keyspace
from inspectq.backends import Backends
from inspectq.jobs import JobRecord
from inspectq.queue import INSPECT_TASK, enqueue_inspection

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # finished; marker swept
    live: int = 0  # a message for them is (or may still be) in the broker

    def counts(self) -> dict[str, int]:
        return {"requeued": len(self.requeued), "closed": len(self.closed), "live": self.live}


def _is_stale(record: JobRecord, now: datetime, stale_after_s: float) -> bool:
    updated = datetime.fromisoformat(record.updated_at.replace("Z", "+00:00"))
    return (now - updated).total_seconds() > stale_after_s


def job_ids_in_broker(client: redis.Redis) -> set[str]:
    """Job ids of every inspection message in the broker: queued (the ``inspectq`` list)
    or delivered and not yet acked, including retries waiting for their countdown (kombu's
    ``unacked`` hash)."""
    envelopes: list[dict[str, Any]] = [
        json.loads(raw) for raw in client.lrange(keyspace.QUEUE, 0, -1)]
    envelopes += [json.loads(raw)[0] for raw in client.hvals(keyspace.UNACKED)]
    found: set[str] = set()
    for envelope in envelopes:
        if envelope.get("headers", {}).get("task") != INSPECT_TASK:
            continue
        body = envelope.get("body", "")
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        try:
            args = json.loads(body)[0]
        except (ValueError, IndexError, TypeError):
            continue
        if args and isinstance(args[0], str):
            found.add(args[0])
    return found


def reconcile(backends: Backends, queue: Celery) -> ReconcileReport:
    """One pass over ``pending/`` (see the module docstring); lost jobs go to ``queue``."""
    report = ReconcileReport()
    jobs, settings = backends.jobs, backends.settings
    now = datetime.now(UTC)
    stale_after_s = settings.visibility_timeout_s + settings.retry_backoff_max_s
    in_broker: set[str] | None = None  # read once, and only if some job looks stale
    pending = jobs.pending_job_ids()
    cached = jobs.cached(pending)
    for job_id in pending:
        record = cached.get(job_id) or jobs.get(job_id)  # not cached: S3, back into Redis
        if record is None:
            log.error("pending marker for %s but no job record in S3", job_id)
            continue
        if record.status.terminal:
            report.closed.append(job_id)
            continue
        if job_id in cached:
            if not _is_stale(record, now, stale_after_s):
                report.live += 1
                continue
            if in_broker is None:
                in_broker = job_ids_in_broker(backends.redis)
            if job_id in in_broker:
                report.live += 1
                continue
        guard = keyspace.requeued(job_id)
        if backends.redis.set(guard, 1, nx=True, ex=settings.visibility_timeout_s):
            enqueue_inspection(queue, job_id)
            report.requeued.append(job_id)
    jobs.clear_pending(report.closed)
    if report.requeued:
        log.warning("reconciler: %s", report.counts())
    else:
        log.info("reconciler: %s", report.counts())
    return report

