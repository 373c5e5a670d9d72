"""Put accepted jobs without an outcome back on the queue when their message was lost.

S3 knows every accepted job without an outcome (``pending/<id>`` markers, which finished
jobs keep until the reconciler sweeps them). The reconciler, every ``reconcile_interval_s``:

* **sweeps** the markers of finished jobs, in batches (one S3 request per 1,000 keys), once
  they are in the results index (it indexes those the indexer missed; while the database
  is unreachable the markers stay, so the index catches up later: ``workers.indexer``);

and re-enqueues every **lost** job: one without an outcome whose message is nowhere in the
broker, neither queued (the ``inspectq`` list) nor delivered and unacked (kombu's
``unacked`` hash, which also holds retries waiting for their countdown). Whether Redis
still holds the job's record does not matter: a client polling after a Redis flush puts
the record back as ``queued``, and that must not make a lost job look alive. Only the
broker's own state tells a lost message from a live one. Two exceptions keep a healthy job
from being enqueued twice: a job whose record changed in the last ``ENQUEUE_GRACE_S``
(ingest writes the record just before it enqueues), and one whose message shows up in a
second read of the broker (a worker was taking it between the two structures).

A Redis ``SET NX`` guard keeps two reconcilers from enqueueing the same job in the same
visibility window; a duplicate delivery would be harmless anyway, since
``JobStore.finish`` keeps the first outcome. A pending record that cannot be read is
quarantined by ``JobStore`` (logged and counted) and the sweep goes on.

Run on demand with ``inspectq reconcile``; Celery beat also runs it every
``reconcile_interval_s`` (see ``workers.app``).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from celery import Celery

from inspectq import keyspace
from inspectq.backends import Backends
from inspectq.jobs import JobRecord
from inspectq.queue import INSPECT_TASK, enqueue_inspection, time_limits
from workers.indexer import index_missing

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # finished; marker swept
    live: int = 0  # a message for them is (or may still be) in the broker
    unreadable: int = 0  # no readable record (quarantined)
    unindexed: int = 0  # finished, kept until the results index can be written

    def counts(self) -> dict[str, int]:
        return {"requeued": len(self.requeued), "closed": len(self.closed), "live": self.live,
                "unreadable": self.unreadable, "unindexed": self.unindexed}


#: A record this recent may belong to an ingest that has not enqueued yet: leave it.
ENQUEUE_GRACE_S = 10.0


def _changed_recently(record: JobRecord, now: datetime) -> bool:
    updated = datetime.fromisoformat(record.updated_at.replace("Z", "+00:00"))
    return (now - updated).total_seconds() < ENQUEUE_GRACE_S


def _job_id_of(raw: bytes, unacked: bool) -> str | None:
    """The job id an inspection message carries; None for anything else (another task, a
    message put there by hand that is not Celery's JSON)."""
    try:
        envelope = json.loads(raw)
        if unacked:
            envelope = envelope[0]  # kombu keeps [message, exchange, routing key]
        if envelope["headers"]["task"] != INSPECT_TASK:
            return None
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, LookupError, TypeError):
        return None
    return args[0] if args and isinstance(args[0], str) else None


def job_ids_in_broker(client: redis.Redis) -> set[str]:
    """Job ids of every inspection message in the broker: queued (the ``inspectq`` list)
    or delivered and not yet acked, including retries waiting for their countdown (kombu's
    ``unacked`` hash)."""
    ids = [_job_id_of(raw, unacked=False) for raw in client.lrange(keyspace.QUEUE, 0, -1)]
    ids += [_job_id_of(raw, unacked=True) for raw in client.hvals(keyspace.UNACKED)]
    return {job_id for job_id in ids if job_id is not None}


def reconcile(backends: Backends, queue: Celery) -> ReconcileReport:
    """One pass over ``pending/`` (see the module docstring); lost jobs go to ``queue``."""
    report = ReconcileReport()
    jobs, settings = backends.jobs, backends.settings
    now = datetime.now(UTC)
    pending = jobs.pending_job_ids()
    cached = jobs.cached(pending)
    in_broker = job_ids_in_broker(backends.redis)
    missing: list[JobRecord] = []
    finished: list[JobRecord] = []
    for job_id in pending:
        record = cached.get(job_id) or jobs.get(job_id)  # not cached: S3, back into Redis
        if record is None:
            report.unreadable += 1  # quarantined by JobStore, or removed meanwhile
        elif record.status.terminal:
            finished.append(record)
        elif job_id in in_broker or _changed_recently(record, now):
            report.live += 1
        else:
            missing.append(record)
    if missing:
        in_broker = job_ids_in_broker(backends.redis)  # a worker may have been taking it
    for record in missing:
        if record.id in in_broker:
            report.live += 1
            continue
        guard = keyspace.requeued(record.id)
        if backends.redis.set(guard, 1, nx=True, ex=settings.visibility_timeout_s):
            enqueue_inspection(queue, record.id, time_limits(settings, record.image))
            report.requeued.append(record.id)
    try:
        report.closed = index_missing(backends, finished)
    except Exception as error:  # unreachable, or a record it refuses: requeueing goes on
        report.unindexed = len(finished)
        log.warning("reconciler: results index: %s: %s; %d finished jobs keep their pending/"
                    " entries until they are indexed", type(error).__name__, error,
                    len(finished))
    jobs.clear_pending(report.closed)
    if report.requeued or report.unreadable or report.unindexed:
        log.warning("reconciler: %s", report.counts())
    else:
        log.info("reconciler: %s", report.counts())
    return report
