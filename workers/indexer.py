"""The indexer: keeps the results index (SQL, ``inspectq.index``) in step with the jobs.

S3 is the durable record and Redis the cache; the index is a third copy, built for queries
(listings, exports, line statistics). Writing it is never on the inference path: a job's
outcome is recorded (``JobStore.finish``), and ``finish`` also appends the job's id to the
Redis list ``keyspace.INDEX_QUEUE``. This process pops those ids in batches, reads the
records (Redis, else S3) and upserts them, one round trip per batch.

Nothing is lost when the database is down: a batch that cannot be written goes back on the
list and the indexer waits (backing off up to ``MAX_BACKOFF_S``), so the index catches up
by itself when the database is back. What Redis loses (a flush, a crash between pop and
write) is caught by the reconciler: it sweeps a finished job's ``pending/`` entry only once
the job is in the index (:func:`index_missing`), so an unindexed job stays on its list.
``inspectq index rebuild`` rebuilds the whole index from S3 alone.

Indexing a job also adds its callbacks to the outbox (``inspectq.index.outbox``), in the
same database; ``workers.callbacks`` delivers them, in a thread of the same process.

Every ``MAINTENANCE_INTERVAL_S`` the indexer also creates the coming days' partitions
(PostgreSQL) and, with ``INSPECTQ_RETENTION_DAYS`` set, removes expired jobs: their S3
objects first, then their rows (the other order could strand objects no row points to).

Run it as ``inspectq index run`` (one or more per deployment; upserts are idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from inspectq import keyspace
from inspectq.backends import Backends
from inspectq.index import IndexUnavailable
from inspectq.index.outbox import Outbox
from inspectq.jobs import JobRecord

log = logging.getLogger(__name__)

#: Longest wait between two tries while the database is unreachable.
MAX_BACKOFF_S = 30.0
MAINTENANCE_INTERVAL_S = 600.0
#: After the first ended job, how long the indexer waits for more to write them together.
LINGER_S = 0.5
#: Expired jobs removed per retention pass (their S3 objects and rows).
RETENTION_BATCH = 1000


@dataclass
class IndexerStats:
    indexed: int = 0
    unavailable: int = 0  # batches put back because the database was unreachable
    refused: int = 0  # records the database refused (logged)
    expired: int = 0


def records_of(backends: Backends, job_ids: Sequence[str]) -> list[JobRecord]:
    """The ended jobs among ``job_ids``: one MGET for the cached, S3 for the rest."""
    cached = backends.jobs.cached(list(job_ids))
    records = []
    for job_id in dict.fromkeys(job_ids):
        record = cached.get(job_id) or backends.jobs.get(job_id)
        if record is not None and record.status.terminal:
            records.append(record)
    return records


def sync_feedback(backends: Backends, records: Iterable[JobRecord]) -> None:
    """Write the feedback entries the index lacks (the API writes each at once; this
    catches those given while the database was down). Compared by time given, so running
    it twice adds nothing."""
    index = backends.index
    for record in records:
        if not record.feedback:
            continue
        have = {_instant(entry["at"]) for entry in index.feedback_history(record.tenant,
                                                                          record.id)}
        created = _instant(record.created_at)
        for entry in record.feedback:
            if _instant(entry.at) not in have:
                index.record_feedback(record.tenant, record.id, created, entry.for_index())


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def index_missing(backends: Backends, records: Iterable[JobRecord]) -> list[str]:
    """Index whichever of these ended jobs the index lacks; returns the ids now indexed.
    Raises IndexUnavailable when the database cannot be reached (the caller keeps them)."""
    by_id = {record.id: record for record in records if record.status.terminal}
    missing = [by_id[job_id] for job_id in by_id.keys() - backends.index.indexed(list(by_id))]
    for start in range(0, len(missing), backends.index.batch_size):
        index_records(backends, missing[start:start + backends.index.batch_size])
    return list(by_id)


def index_records(backends: Backends, records: Sequence[JobRecord],
                  outbox: Outbox | None = None) -> int:
    """Upsert ended jobs, their feedback, and their callbacks' deliveries into the outbox
    (each idempotent); returns the job rows written."""
    written = backends.index.upsert(records)
    sync_feedback(backends, records)
    (outbox or Outbox(backends.index, backends.settings.callback_retry_hours)).add(records)
    return written


class Indexer:
    """Drains ``keyspace.INDEX_QUEUE`` into the results index (see the module docstring)."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.outbox = Outbox(backends.index, backends.settings.callback_retry_hours)
        self.stats = IndexerStats()
        self._backoff_s = 0.0
        self._maintained_at = 0.0

    def drain_once(self, block_s: float = 1.0, linger_s: float = LINGER_S) -> int:
        """Pop one batch (waiting up to ``block_s`` for the first id, then ``linger_s`` for
        more) and index it; returns how many records were written. IndexUnavailable puts
        the batch back and re-raises."""
        redis_client, index = self.backends.redis, self.backends.index
        popped = redis_client.blmpop(block_s, 1, keyspace.INDEX_QUEUE, direction="LEFT",
                                     count=index.batch_size)
        if not popped:
            return 0
        job_ids = [raw.decode() for raw in popped[1]]
        if len(job_ids) < index.batch_size and linger_s > 0:
            # Gather a batch: a write costs ~4 ms of CPU whatever its size, so at a few
            # images per second one write per job would cost more than the rows themselves.
            time.sleep(linger_s)
            more = redis_client.lmpop(1, keyspace.INDEX_QUEUE, direction="LEFT",
                                      count=index.batch_size - len(job_ids))
            job_ids += [raw.decode() for raw in more[1]] if more else []
        try:
            records = records_of(self.backends, job_ids)
            written = index_records(self.backends, records, self.outbox)
        except IndexUnavailable:
            redis_client.rpush(keyspace.INDEX_QUEUE, *job_ids)
            raise
        except Exception:  # a record the database refuses must not block the others
            log.exception("indexer: a batch of %d failed; indexing them one by one",
                          len(job_ids))
            written = sum(self._index_alone(record) for record in records)
        self.stats.indexed += written
        return written

    def _index_alone(self, record: JobRecord) -> int:
        try:
            return index_records(self.backends, [record], self.outbox)
        except IndexUnavailable:
            self.backends.redis.rpush(keyspace.INDEX_QUEUE, record.id)
            raise
        except Exception:
            self.stats.refused += 1
            log.exception("indexer: job %s cannot be indexed; left out (its record stays "
                          "in S3, see `inspectq index rebuild`)", record.id)
            return 0

    def maintain(self, now: datetime | None = None) -> None:
        """Partitions ahead, then retention (when configured)."""
        index = self.backends.index
        index.maintain(now)
        if index.retention_days <= 0:
            return
        # Whole days only, so PostgreSQL drops whole partitions.
        moment = (now or datetime.now(UTC)) - timedelta(days=index.retention_days)
        before = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        last = None
        while expired := index.expired(before, RETENTION_BATCH, after=last):
            store = self.backends.store
            for job_id in expired:
                store.delete_many(store.list_keys(keyspace.keys_for(job_id).prefix))
            store.delete_many([keyspace.pending(job_id) for job_id in expired])
            self.stats.expired += len(expired)
            last = expired[-1]
        index.drop_before(before)

    def run(self, stop: threading.Event) -> None:
        """Index until ``stop`` is set; never exits on a database or Redis outage."""
        migrated = False
        while not stop.is_set():
            try:
                if not migrated:
                    self.backends.index.migrate()
                    migrated = True
                if time.monotonic() - self._maintained_at > MAINTENANCE_INTERVAL_S:
                    self.maintain()
                    self._maintained_at = time.monotonic()
                self.drain_once()
                self._backoff_s = 0.0
            except IndexUnavailable as error:
                self.stats.unavailable += 1
                self._backoff_s = min(MAX_BACKOFF_S, max(0.5, self._backoff_s * 2))
                log.warning("indexer: %s; retrying in %.1f s", error, self._backoff_s)
                stop.wait(self._backoff_s)
            except Exception:
                self._backoff_s = min(MAX_BACKOFF_S, max(0.5, self._backoff_s * 2))
                log.exception("indexer: unexpected error; retrying in %.1f s", self._backoff_s)
                stop.wait(self._backoff_s)
