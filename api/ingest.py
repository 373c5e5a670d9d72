"""Store and enqueue: turn an accepted image into a durable, queued job.

The order is what makes "nothing is lost" hold:

1. capacity check (Redis): over ``max_pending_jobs`` -> 429, nothing written;
2. the image goes to S3 under the new job's key;
3. with an ``Idempotency-Key``, the key is claimed (conditional S3 put);
4. the job record is written (S3 ``pending/<id>``, then the Redis cache);
5. the job id is enqueued.

A failure in 2 or 3 leaves at most an orphan image, never a job. A failure in 4 or 5 marks
the job ``failed`` (reason ``ingest_failed``) and releases its idempotency claim, best
effort; if even that fails, the ``pending/`` entry keeps the job on the reconciler's list,
so it is run later rather than lost. The client gets 503 in all these cases.

A process killed outright (SIGKILL, a lost node) answers nothing, and the client retries:
killed between 4 and 5, the ``pending/`` entry puts the job on the reconciler's list and a
retry with the same key gets that job back; killed between 3 and 4, the claim names a job
with no record, and a retry adopts it once the claim is abandoned (``api.idempotency``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from api.errors import ApiError
from api.idempotency import Claim, in_progress, mismatch, request_fingerprint
from api.images import AcceptedImage
from api.schemas import JobOptions
from api.services import Services
from inspectq.callbacks import CallbackUrlError, check_callback_url
from inspectq.jobs import ImageRef, JobError, JobRecord, Status, new_job_id, utc_now
from inspectq.keyspace import keys_for
from inspectq.queue import enqueue_inspection, pending_count, time_limits
from inspectq.result import Thresholds

log = logging.getLogger(__name__)

QUEUE_FULL_RETRY_AFTER_S = 10


@dataclass(frozen=True)
class Accepted:
    job_id: str
    replayed: bool
    status: Status = Status.QUEUED  # a replay answers the job's current status


def check_capacity(svc: Services, new_jobs: int) -> None:
    """429 when ``new_jobs`` more would take the queue past ``max_pending_jobs``."""
    pending = pending_count(svc.redis)
    if pending + new_jobs > svc.settings.max_pending_jobs:
        raise ApiError(
            429,
            "queue_full",
            f"The inspection queue is full ({pending} jobs pending); retry later.",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
        )


def resolve_thresholds(svc: Services, options: JobOptions) -> Thresholds:
    try:
        pass_t, reject_t = options.thresholds(
            svc.settings.pass_threshold, svc.settings.reject_threshold
        )
    except ValueError as error:
        raise ApiError(400, "invalid_thresholds", str(error)) from error
    return Thresholds(pass_threshold=pass_t, reject_threshold=reject_t)


def check_callback(svc: Services, options: JobOptions) -> None:
    """400 ``invalid_callback_url`` for a URL the service must not call (see
    ``inspectq.callbacks``)."""
    if options.callback_url is None:
        return
    try:
        check_callback_url(options.callback_url, svc.settings.callback_allow_private)
    except CallbackUrlError as error:
        raise ApiError(400, "invalid_callback_url", f"callback_url refused: {error}") from error


def accept(
    svc: Services,
    *,
    tenant: str,
    image: AcceptedImage,
    options: JobOptions,
    thresholds: Thresholds,
    idempotency_key: str | None,
    started: float,
    batch_id: str | None = None,
) -> Accepted:
    """Store, record and enqueue one validated image. ``started`` is ``perf_counter()`` at
    the start of the request, for the record's ``ingest_ms``."""
    job_id = new_job_id()
    mine = Claim(job_id=job_id, image_sha256=image.sha256,
                 request_sha256=request_fingerprint(image.sha256, options.as_sent()),
                 claimed_at=time.time())
    adopted = False
    if idempotency_key is not None:
        existing = svc.claims.find(tenant, idempotency_key)
        if existing is not None:
            if not existing.matches(mine):
                raise mismatch()
            if svc.jobs.get(existing.job_id) is not None or not existing.abandoned(time.time()):
                return _replay(svc, existing, mine, tenant)
            # The request that claimed the key died before recording its job: build that job.
            log.warning("job %s: adopting an abandoned Idempotency-Key claim", existing.job_id)
            job_id, adopted = existing.job_id, True

    keys = keys_for(job_id)
    svc.store.put(keys.image, image.data, image.content_type)

    if idempotency_key is not None and not adopted:
        winner = svc.claims.claim(tenant, idempotency_key, mine)
        if winner.job_id != job_id:
            _forget_image(svc, keys.image)
            return _replay(svc, winner, mine, tenant)

    now = utc_now()
    record = JobRecord(
        id=job_id,
        tenant=tenant,
        status=Status.QUEUED,
        created_at=now,
        updated_at=now,
        enqueued_at=time.time(),
        line=options.line,
        camera=options.camera,
        batch_id=batch_id,
        metadata=options.metadata_object(),
        callback_url=options.callback_url,
        thresholds=thresholds,
        image=ImageRef(
            key=keys.image,
            sha256=image.sha256,
            bytes=len(image.data),
            content_type=image.content_type,
            width=image.width,
            height=image.height,
        ),
        # Up to the record write; recording and enqueueing add a few ms (in the metric).
        ingest_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    try:
        svc.jobs.create(record)
        enqueue_inspection(svc.celery, job_id, time_limits(svc.settings, record.image))
    except Exception:
        _abandon(svc, job_id, tenant, idempotency_key)
        raise
    svc.metrics.jobs_accepted.inc()
    svc.metrics.ingest_seconds.observe(time.perf_counter() - started)
    return Accepted(job_id=job_id, replayed=False)


def _replay(svc: Services, claimed: Claim, mine: Claim, tenant: str) -> Accepted:
    if not claimed.matches(mine):
        raise mismatch()
    record = svc.jobs.get(claimed.job_id)
    if record is None or record.tenant != tenant:
        # The winner has claimed the key but not yet written its record.
        raise in_progress()
    return Accepted(job_id=claimed.job_id, replayed=True, status=record.status)


def _forget_image(svc: Services, key: str) -> None:
    try:
        svc.store.delete(key)
    except Exception:
        log.warning("could not delete orphan image %s", key, exc_info=True)


def _abandon(svc: Services, job_id: str, tenant: str, idempotency_key: str | None) -> None:
    """Best effort after a failed record/enqueue: fail the job visibly, free its key."""
    try:
        if svc.jobs.get(job_id) is not None:
            svc.jobs.finish(
                job_id,
                error=JobError(
                    code="ingest_failed",
                    message="The job could not be enqueued; the client was told to retry.",
                ),
            )
    except Exception:
        log.warning("job %s left pending for the reconciler", job_id, exc_info=True)
    if idempotency_key is not None:
        try:
            svc.claims.release(tenant, idempotency_key)
        except Exception:
            log.warning("could not release the idempotency claim of %s", job_id, exc_info=True)
