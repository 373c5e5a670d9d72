"""The job record: inspectq's own account of every accepted image, from ``queued`` to its end.

The record lives in two places on purpose:

* S3 is the durable record (keys in :mod:`inspectq.keyspace`). ``pending/<id>`` holds the
  accepted record from the moment the job is accepted until the reconciler sees its outcome
  (so listing ``pending/`` finds every unfinished job, and some just finished);
  ``jobs/<id>/result.json`` holds the final record (``done`` or ``failed``) and is written
  with a conditional put, so the first outcome wins and a redelivered job can never report a
  second, different one. Finishing a job does not delete its ``pending/`` entry: the
  reconciler sweeps finished jobs' entries in batches (one S3 request per 1,000), which
  keeps a delete off every job's hot path.
* Redis is the fast cache the API polls (``inspectq:job:<id>``, with a TTL) and carries the
  transient states (``processing``, ``retrying``). When Redis loses it, :meth:`JobStore.get`
  falls back to S3 and puts it back.

A record that cannot be parsed (corrupted, or written by a bug) never stops a reader: it is
moved to ``quarantine/<its key>`` in S3 (or dropped from Redis, which holds only a copy),
logged, counted (``keyspace.QUARANTINED_COUNT``, exported by the API's ``/metrics``), and
the job reads as unknown. One bad record must not stop the reconciler for every other job.

Celery's own result backend is never used: it answers PENDING for ids it never saw.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, Field

from inspectq import keyspace
from inspectq.config import Settings
from inspectq.endings import JobEndings
from inspectq.feedback import Feedback, FeedbackIn
from inspectq.result import InspectionResult, Thresholds
from inspectq.storage import ObjectExists, ObjectStore

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^j_[A-Za-z0-9_-]{22}$")
_BATCH_ID = re.compile(r"^b_[A-Za-z0-9_-]{22}$")
#: A long-poll re-reads the record at least this often, in case an ending was missed.
WAIT_RECHECK_S = 5.0


def new_job_id() -> str:
    """An unguessable id (128 random bits), safe in URLs and S3 keys."""
    return "j_" + secrets.token_urlsafe(16)


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.fullmatch(value))


def new_batch_id(derived_from: str | None = None) -> str:
    """A batch's id: like a job's, with its own prefix. ``derived_from`` (a tenant and its
    Idempotency-Key) makes it a digest of that instead, so a retried batch keeps its id."""
    if derived_from is None:
        return "b_" + secrets.token_urlsafe(16)
    digest = hashlib.sha256(derived_from.encode()).digest()[:16]
    return "b_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def is_batch_id(value: str) -> bool:
    return bool(_BATCH_ID.fullmatch(value))


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Status(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (Status.DONE, Status.FAILED)


class JobError(BaseModel):
    code: str
    message: str


class ImageRef(BaseModel):
    key: str
    sha256: str
    bytes: int
    content_type: str
    width: int | None = Field(default=None, description="Pixels, as read at ingest.")
    height: int | None = None


class RetryState(BaseModel):
    """While a job is ``retrying``: which attempt comes next, why, and when."""

    attempt: int = Field(description="The retry that comes next (1 is the first).")
    reason: str = Field(description="triton_unavailable or storage_unavailable.")
    next_attempt_in_s: float


class JobRecord(BaseModel):
    id: str
    tenant: str
    status: Status
    created_at: str
    updated_at: str
    enqueued_at: float = Field(description="Unix time of enqueue, for the queue-wait timing.")
    line: str
    camera: str | None = None
    batch_id: str | None = Field(
        default=None, description="The batch (``POST /v1/batches``) the job came in with."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = Field(
        default=None, description="POSTed the job's public JSON when it ends (signed)."
    )
    thresholds: Thresholds
    image: ImageRef
    ingest_ms: float = 0.0
    result: InspectionResult | None = None
    mask_key: str | None = Field(
        default=None,
        description="S3 key of the mask behind `result` (never shown to clients). Each run "
        "of a job writes its own mask, and the first outcome recorded names its run's: two "
        "runs in flight together can never leave a mask that disagrees with the result.",
    )
    error: JobError | None = None
    retry: RetryState | None = None
    feedback: list[Feedback] = Field(
        default_factory=list,
        description="Operator feedback, oldest first (the durable copy: one S3 object each).",
    )

    @property
    def mask(self) -> str:
        """Where this done job's mask is (older records: the one fixed key)."""
        return self.mask_key or keyspace.keys_for(self.id).mask

    @property
    def heatmap(self) -> str | None:
        """Where this done job's defect-probability heatmap is (None for older records)."""
        return keyspace.heatmap_beside(self.mask)

    def public(self) -> dict[str, Any]:
        """What a client sees: no tenant, no internal keys."""
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "line": self.line,
        }
        if self.camera is not None:
            body["camera"] = self.camera
        if self.batch_id is not None:
            body["batch_id"] = self.batch_id
        if self.metadata:
            body["metadata"] = self.metadata
        if self.result is not None:
            body["result"] = self.result.model_dump(mode="json", by_alias=True)
        if self.error is not None:
            body["error"] = self.error.model_dump()
        if self.retry is not None:
            body["retry"] = self.retry.model_dump()
        if self.feedback:
            body["feedback"] = {
                "latest": self.feedback[-1].model_dump(mode="json", by_alias=True,
                                                       exclude_none=True),
                "history": [entry.model_dump(mode="json", by_alias=True, exclude_none=True)
                            for entry in self.feedback],
            }
        return body

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class JobStore:
    """Reads and writes job records in Redis (cache) and S3 (durable)."""

    def __init__(self, settings: Settings, store: ObjectStore, redis_client: redis.Redis) -> None:
        self._store = store
        self._redis = redis_client
        self._ttl = settings.result_ttl_s
        self._endings = JobEndings(redis_client)

    def _cache(self, record: JobRecord, client: redis.Redis | None = None) -> None:
        """Put ``record`` in Redis (through ``client``, e.g. a pipeline, when given)."""
        (client or self._redis).set(keyspace.job_cache(record.id), record.to_json(), ex=self._ttl)

    def create(self, record: JobRecord) -> None:
        """Persist a newly accepted job: S3 first (durable), then the Redis cache."""
        self._store.put(keyspace.pending(record.id), record.to_json().encode(), "application/json")
        self._cache(record)

    def get(self, job_id: str) -> JobRecord | None:
        """The newest known state: Redis, else the S3 outcome, else the S3 accepted record.
        None for an unknown job, and for one whose stored record is unreadable
        (quarantined, see the module docstring)."""
        cache_key = keyspace.job_cache(job_id)
        cached = self._redis.get(cache_key)
        if cached is not None:
            record = self._parse(cached, cache_key)
            if record is not None:
                return record
        for key in (keyspace.keys_for(job_id).result, keyspace.pending(job_id)):
            raw = self._store.get(key)
            if raw is None:
                continue
            record = self._parse(raw, key)
            if record is None:
                return None
            if record.status.terminal:  # feedback lives beside the write-once result
                record = record.model_copy(update={"feedback": self.stored_feedback(job_id)})
            self._cache(record)
            return record
        return None

    def stored_feedback(self, job_id: str) -> list[Feedback]:
        """The job's feedback entries in S3, oldest first (unreadable ones quarantined)."""
        entries = []
        for key in sorted(self._store.list_keys(keyspace.keys_for(job_id).feedback_prefix)):
            raw = self._store.get(key)
            if raw is None:
                continue
            try:
                entries.append(Feedback.model_validate_json(raw))
            except ValueError as error:
                self.quarantine(key, raw, error)
        return entries

    def add_feedback(self, record: JobRecord, given: FeedbackIn) -> JobRecord:
        """Store an operator's feedback on an ended job: its own S3 object first (durable,
        never overwriting another operator's), then the cached record, rebuilt from every
        stored entry so two answers at once both show. Returns the updated record."""
        entry = Feedback(**given.model_dump(), at=utc_now())
        key = keyspace.keys_for(record.id).feedback_entry(entry.at, secrets.token_hex(4))
        self._store.put(key, entry.model_dump_json(by_alias=True).encode(), "application/json")
        updated = record.model_copy(update={"feedback": self.stored_feedback(record.id)})
        self._cache(updated)
        return updated

    def _parse(self, raw: bytes, key: str) -> JobRecord | None:
        """The record stored at ``key`` (a Redis key or an S3 key), or None after
        quarantining it when it cannot be parsed."""
        try:
            return JobRecord.model_validate_json(raw)
        except (ValueError, RecursionError) as error:  # ValidationError is a ValueError
            self.quarantine(key, raw, error)
            return None

    def quarantine(self, key: str, raw: bytes, error: Exception) -> None:
        """Move an unreadable record out of every reader's way, keep it for a person, count
        it. A Redis copy is simply dropped: S3 holds the durable one."""
        log.error("unreadable record at %s quarantined (%d bytes): %s: %s", key, len(raw),
                  type(error).__name__, str(error)[:300])
        if key.startswith(keyspace.job_cache("")):
            self._redis.delete(key)
        else:
            self._store.put(keyspace.quarantined(key), raw, "application/octet-stream")
            self._store.delete(key)
        self._redis.incr(keyspace.QUARANTINED_COUNT)

    def update(
        self, job_id: str, *, record: JobRecord | None = None, **changes: Any
    ) -> JobRecord | None:
        """Record a transient state (``processing``, ``retrying``) in Redis. ``record`` is
        the job's record when the caller has just read it (saves reading it again).

        Never moves a job out of a terminal state: once done or failed, it stays so.
        """
        if record is None:
            record = self.get(job_id)
        if record is None or record.status.terminal:
            return record
        updated = record.model_copy(update={**changes, "updated_at": utc_now()})
        self._cache(updated)
        return updated

    def finish(
        self,
        job_id: str,
        *,
        result: InspectionResult | None = None,
        mask_key: str | None = None,
        error: JobError | None = None,
        record: JobRecord | None = None,
    ) -> JobRecord:
        """Write the job's one outcome (a ``result`` and the ``mask_key`` its run wrote, or
        an ``error``). The first outcome written to S3 wins; a later call (a redelivered
        message) gets that first outcome back instead of writing its own. ``record`` is the
        job's record when the caller already holds it (saves a read).
        """
        if record is None:
            record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        status = Status.DONE if error is None else Status.FAILED
        final = record.model_copy(
            update={
                "status": status,
                "result": result,
                "mask_key": mask_key,
                "error": error,
                "retry": None,
                "updated_at": utc_now(),
            }
        )
        result_key = keyspace.keys_for(job_id).result
        body = final.to_json().encode()
        try:
            self._store.put(result_key, body, "application/json", only_if_new=True)
        except ObjectExists:
            raw = self._store.get(result_key)
            first = None if raw is None else self._parse(raw, result_key)
            if first is not None:
                final = first
            else:  # the first outcome was unreadable and is quarantined now: ours stands
                self._store.put(result_key, body, "application/json", only_if_new=True)
        pipe = self._redis.pipeline(transaction=False)
        self._cache(final, pipe)
        pipe.publish(keyspace.job_ended(job_id), final.status.value)
        pipe.rpush(keyspace.INDEX_QUEUE, job_id)
        pipe.execute()
        return final

    def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """Long-poll: return as soon as the job ends, or its current state at the timeout."""
        if timeout_s <= 0:
            return self.get(job_id)
        deadline = time.monotonic() + timeout_s
        with self._endings.watch(job_id) as ended:
            # Read after the watch began, so an ending in between is not missed.
            record = self.get(job_id)
            while record is not None and not record.status.terminal:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ended.wait(min(left, WAIT_RECHECK_S))
                ended.clear()
                record = self.get(job_id)
        return record

    def clear_pending(self, job_ids: list[str]) -> None:
        """Drop the ``pending/`` entries of jobs whose outcomes are already in S3."""
        self._store.delete_many([keyspace.pending(job_id) for job_id in job_ids])

    def pending_job_ids(self) -> list[str]:
        """Accepted jobs that have no outcome yet (the reconciler's work list)."""
        return [keyspace.job_id_of_pending(key)
                for key in self._store.list_keys(keyspace.PENDING_PREFIX)]

    def cached(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """The records Redis still holds among ``job_ids`` (one MGET per 1,000); a job
        missing from the answer was lost from Redis (the reconciler's test)."""
        found: dict[str, JobRecord] = {}
        for start in range(0, len(job_ids), 1000):
            chunk = job_ids[start:start + 1000]
            for job_id, raw in zip(chunk, self._redis.mget(
                    [keyspace.job_cache(job_id) for job_id in chunk]), strict=True):
                record = None if raw is None else self._parse(raw, keyspace.job_cache(job_id))
                if record is not None:
                    found[job_id] = record
        return found

    def reopen(self, job_id: str) -> JobRecord | None:
        """Undo a ``failed`` outcome so the job can run again (dead-letter replay, an
        operator's explicit choice). Returns the queued record, or None when the job is
        unknown or not failed: a ``done`` job is never reopened.
        """
        record = self.get(job_id)
        if record is None or record.status is not Status.FAILED:
            return None
        queued = record.model_copy(
            update={"status": Status.QUEUED, "result": None, "mask_key": None, "error": None,
                    "retry": None,
                    "enqueued_at": time.time(), "updated_at": utc_now()}
        )
        self._store.put(keyspace.pending(job_id), queued.to_json().encode(), "application/json")
        self._store.delete(keyspace.keys_for(job_id).result)
        self._cache(queued)
        return queued
