"""The one task: run a job's image through every stage, in order, and record one outcome.

The stages, in the order an image travels (each in the module named for it):

1. ``cache``: the same bytes under the same model answered before? Reuse that answer;
2. ``fetch``: the image bytes from S3;
3. ``preprocess``: decode (upright), check the frame's quality (``quality``), cut into tiles;
4. ``infer``: the tiles through the model on Triton;
5. ``postprocess``: stitch the tiles' outputs, find the defect regions;
6. ``render``: the mask and heatmap PNGs, stored beside the image (and the answer
   remembered, stage 1);
7. decide: ``inspectq.result.decide``, from the score and the job's own thresholds, then
   ``apply_quality_rule`` (a frame with quality issues never PASSes);
8. ``record``: the one outcome, to S3 and Redis;
9. ``alert``: the line's health monitors (done and failed jobs alike).

Every way out of :func:`inspect_job` leaves the job done, visibly failed with a reason, or
``retrying`` with a :class:`RetryLater` for the Celery task to schedule:

========================================  ====================================
what happened                             outcome
========================================  ====================================
Triton down, overloaded, model not ready  retry with backoff, then ``triton_unavailable``
S3 (or Redis) unreachable                 retry with backoff, then ``storage_unavailable``
bytes are not a readable image            ``undecodable_image`` at once
image gone from S3                        ``image_missing`` at once
Triton answered outside the contract      ``model_contract`` at once
ran past its soft time limit              retried with twice the time, then ``timeout``
ran past its hard time limit              ``timeout`` at once
delivered more than ``max_deliveries``    ``poison_message``, dead-lettered
anything else                             ``internal_error`` with the message
========================================  ====================================
"""

from __future__ import annotations

import logging
import random
import secrets
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from inspectq import keyspace
from inspectq.imaging import UndecodableImage, decode_image, image_score, make_model_input, stitch
from inspectq.jobs import JobError, JobRecord, RetryState, Status, is_job_id
from inspectq.quality import check_quality
from inspectq.queue import TimeLimits, max_hard_limit_s
from inspectq.result import InspectionResult, Timings, final_decision, review_reasons
from inspectq.storage import StorageUnavailable
from workers import cache, deadletter
from workers.fetch import ImageMissing, fetch_image
from workers.infer import ModelContractError, TritonUnavailable
from workers.postprocess import find_regions
from workers.record import record_result
from workers.render import heatmap_png, mask_png, write_run_images
from workers.services import Services

log = logging.getLogger(__name__)

#: How long a job's delivery counter lives; far beyond any redelivery cycle.
DELIVERY_COUNT_TTL_S = 24 * 3600


class RetryLater(Exception):
    """The job hit a transient outage or ran out of time and was marked ``retrying``: run
    it again later, with ``limits`` when it needs more time."""

    def __init__(self, countdown_s: float, reason: str, limits: TimeLimits | None = None
                 ) -> None:
        super().__init__(reason)
        self.countdown_s = countdown_s
        self.limits = limits


def backoff_s(attempt: int, cap_s: float) -> float:
    """Exponential backoff with "equal jitter": 2**attempt seconds capped at ``cap_s``, of
    which the second half is random, so retries of many jobs spread out but never fire at
    once."""
    ceiling = min(float(cap_s), 2.0 ** attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def count_delivery(services: Services, job_id: str, retries: int) -> int:
    """How many times this message (this job at this retry) has been delivered, this one
    included. A retry is a new message, so it starts its own count."""
    key = keyspace.deliveries(job_id, retries)
    pipe = services.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, DELIVERY_COUNT_TTL_S)
    count, _ = pipe.execute()
    return int(count)


def inspect_job(services: Services, job_id: str, retries: int = 0,
                limits: TimeLimits | None = None) -> JobRecord | None:
    """Run job ``job_id``; ``retries`` is how many retries came before this run, ``limits``
    the time limits this run has (the settings' defaults when None).

    Returns the job's record afterwards (None for an unknown job). Raises
    :class:`RetryLater` when the job should run again later.
    """
    started = time.time()
    settings, jobs = services.settings, services.jobs
    if not is_job_id(job_id):
        log.error("message with a malformed job id %r dropped", job_id[:80])
        return None
    record = jobs.get(job_id)
    if record is None:
        log.error("job %s: no record in Redis or S3; message dropped", job_id)
        return None
    if record.status.terminal:
        log.info("job %s already %s; duplicate delivery ignored", job_id, record.status)
        _observe_for_alerts(services, record)  # counted once: a no-op unless it was missed
        return record
    deliveries = count_delivery(services, job_id, retries)
    if deliveries > settings.max_deliveries:
        dead = deadletter.dead_letter(services, record, deliveries)
        _observe_for_alerts(services, dead)
        return dead
    record = jobs.update(job_id, record=record, status=Status.PROCESSING, retry=None) or record
    try:
        result, mask_key = _run_stages(services, record, started)
        final = record_result(jobs, record, result, mask_key)
    except (TritonUnavailable, StorageUnavailable, redis.ConnectionError,
            redis.TimeoutError) as error:
        code = "triton_unavailable" if isinstance(error, TritonUnavailable) else (
            "storage_unavailable")
        if retries < settings.max_retries:
            countdown = backoff_s(retries, settings.retry_backoff_max_s)
            log.warning("job %s: %s (%s); retry %d in %.1fs", job_id, code, error,
                        retries + 1, countdown)
            jobs.update(job_id, record=record, status=Status.RETRYING, retry=RetryState(
                attempt=retries + 1, reason=code, next_attempt_in_s=round(countdown, 1),
            ))
            raise RetryLater(countdown, code) from error
        return _fail(services, job_id, code, f"gave up after {retries} retries: {error}")
    except UndecodableImage as error:
        return _fail(services, job_id, "undecodable_image", str(error))
    except ImageMissing as error:
        return _fail(services, job_id, "image_missing", str(error))
    except ModelContractError as error:
        return _fail(services, job_id, "model_contract", str(error))
    except SoftTimeLimitExceeded:
        # A healthy but busy system (an outage raises its own errors) must not fail work
        # for being slow: run it again with twice the time, up to the longest a job may run.
        limits = limits or TimeLimits(soft_s=settings.task_soft_time_limit_s,
                                      hard_s=settings.task_time_limit_s)
        longer = limits.doubled(max_hard_limit_s(settings))
        if retries < settings.max_retries and longer.soft_s > limits.soft_s:
            log.warning("job %s: ran past its %.0f s limit; retry %d with %.0f s", job_id,
                        limits.soft_s, retries + 1, longer.soft_s)
            jobs.update(job_id, status=Status.RETRYING, retry=RetryState(
                attempt=retries + 1, reason="timeout", next_attempt_in_s=1.0))
            raise RetryLater(1.0, "timeout", limits=longer) from None
        return _fail(services, job_id, "timeout",
                     f"inspection ran past its {limits.soft_s:.0f} s time limit")
    except Exception as error:
        log.exception("job %s: unexpected error", job_id)
        return _fail(services, job_id, "internal_error", f"{type(error).__name__}: {error}")
    _observe_for_alerts(services, final)
    return final


def _fail(services: Services, job_id: str, code: str, message: str) -> JobRecord:
    log.error("job %s failed: %s: %s", job_id, code, message)
    final = services.jobs.finish(job_id, error=JobError(code=code, message=message))
    _observe_for_alerts(services, final)
    return final


def _observe_for_alerts(services: Services, final: JobRecord | None) -> None:
    """Stage 9 for a job that ended; whatever goes wrong is logged, never the job's."""
    if final is None:
        return
    try:
        services.line_health.observe(final)
    except Exception:
        log.exception("job %s: line health bookkeeping failed (the result is recorded)",
                      final.id)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _run_stages(services: Services, record: JobRecord, started: float
                ) -> tuple[InspectionResult, str]:
    """Stages 1 to 7 (see the module docstring): reuse an earlier answer for the same bytes
    and model, or fetch -> preprocess -> infer -> postprocess -> mask and heatmap PNGs; then
    decide.
    Returns the result, not yet recorded, and the key of the mask this run wrote (its own:
    a second run in flight at the same time writes another, see ``JobRecord.mask_key``)."""
    settings, store = services.settings, services.store
    mask_key = keyspace.keys_for(record.id).run_mask(secrets.token_hex(6))
    timings = Timings(ingest_ms=record.ingest_ms,
                      queue_wait_ms=round(max(0.0, started - record.enqueued_at) * 1000, 2))
    params = {"tile_size": settings.tile_size, "tile_stride": settings.tile_stride,
              "min_region_px": settings.min_region_px, "format": cache.ModelAnswer.FORMAT,
              # the answer's quality depends on it (params are ints: in thousandths)
              "focus_min_sharpness_milli": round(settings.focus_min_sharpness * 1000)}
    clock = time.perf_counter()
    info = services.model.current_info()
    timings.triton_ms = _ms(clock)

    clock = time.perf_counter()
    answer = cache.lookup(services.redis, store, record, info.sha256, params, mask_key)
    timings.s3_get_ms = _ms(clock)
    cache_hit = answer is not None
    record_started = time.perf_counter()
    if answer is None:
        clock = time.perf_counter()
        data = fetch_image(store, record.image.key)
        timings.s3_get_ms += _ms(clock)

        clock = time.perf_counter()
        image = decode_image(data)
        quality = check_quality(image, settings.focus_min_sharpness)
        layout = make_model_input(image, settings.tile_size, settings.tile_stride)
        timings.preprocess_ms = _ms(clock)

        clock = time.perf_counter()
        outputs = services.model.infer(layout.tiles)
        info = outputs.info
        timings.triton_ms += _ms(clock)

        clock = time.perf_counter()
        class_map, prob = stitch(layout, outputs.class_map, outputs.defect_prob)
        answer = cache.ModelAnswer(
            score=round(image_score(outputs.image_score), 4),
            regions=find_regions(class_map, prob, info.classes, settings.min_region_px),
            width=layout.width, height=layout.height, quality=quality, mask_key=mask_key,
            params=params,
            ood_score=None if outputs.ood_score is None
            else round(image_score(outputs.ood_score), 4),
        )
        timings.postprocess_ms = _ms(clock)

        record_started = time.perf_counter()
        write_run_images(store, mask_key, mask_png(class_map), heatmap_png(prob))
        cache.remember_answer(services.redis, record, info.sha256, answer,
                              settings.result_ttl_s)
    decision = final_decision(answer.score, record.thresholds, answer.quality, answer.ood_score)
    # Mask and cache writes; the result's own write (finish) comes after and cannot time itself.
    timings.record_ms = _ms(record_started)
    timings.total_ms = round((time.time() - started) * 1000, 2)
    return InspectionResult(
        decision=decision, score=answer.score, defects=answer.regions, width=answer.width,
        height=answer.height, model=info, thresholds=record.thresholds,
        quality=answer.quality, ood_score=answer.ood_score,
        review_reasons=review_reasons(answer.score, record.thresholds, answer.quality,
                                      answer.ood_score),
        timings=timings, cache_hit=cache_hit,
    ), mask_key
