"""Stage 1: the inference cache: the same image bytes under the same model are inferred once.

The model's answer (score, regions, size, and which job's S3 objects hold the mask) is kept
in Redis at ``keyspace.inference_cache(<tenant>, <model sha256>, <image sha256>)`` (with the
results' TTL), together with the tiling parameters it was made with. A later job of the same
tenant with the same image copies the mask and heatmap and reuses the regions and score; its
decision is still made from its own thresholds. The cache is per tenant: a shared one would answer a
second tenant faster and with ``cache_hit: true``, telling it that another tenant had
inspected the same image. The cache lives in Redis, not S3, because it is only a cache:
losing it costs one inference, while an S3 lookup and write would cost every new image two
object-store round trips.

``tasks`` looks the answer up first (:func:`lookup`), and on a miss remembers the fresh
answer once its mask is stored (:func:`remember_answer`).
"""

from __future__ import annotations

from typing import ClassVar

import redis
from pydantic import BaseModel, Field

from inspectq import keyspace
from inspectq.jobs import JobRecord
from inspectq.result import ImageQuality, Region
from inspectq.storage import ObjectStore
from workers.render import write_run_images


class ModelAnswer(BaseModel):
    """What inference concluded about one image, independent of any job's thresholds."""

    #: Bump when decoding or the quality checks change what an answer means; it is one of
    #: the ``params``, so answers cached before (e.g. sideways, or without a quality) are
    #: never reused.
    FORMAT: ClassVar[int] = 3

    score: float
    regions: list[Region]
    width: int
    height: int
    # The image-quality checks of the decoded frame, so a cache hit reports them too. The
    # default only lets answers cached before the checks parse (their params lack "format").
    quality: ImageQuality = Field(default_factory=ImageQuality)
    # The max tile ood_score; None for a model without that output (and answers cached
    # before it existed, which were made by such models).
    ood_score: float | None = None
    mask_key: str  # the S3 key of the mask this answer was made with
    params: dict[str, int]  # tiling settings (and FORMAT) the answer was computed with


def cached_answer(
    cache: redis.Redis, record: JobRecord, model_sha: str, params: dict[str, int]
) -> ModelAnswer | None:
    """The earlier answer for this tenant's bytes and model, if made with the same tiling."""
    if not model_sha:
        return None  # a model without a digest cannot be told apart from the next one
    data = cache.get(keyspace.inference_cache(record.tenant, model_sha, record.image.sha256))
    if data is None:
        return None
    answer = ModelAnswer.model_validate_json(data)
    return answer if answer.params == params else None


def copy_run_images(store: ObjectStore, from_key: str, to_key: str) -> bool:
    """Copy an earlier job's mask (at ``from_key``) and its heatmap; False when either is
    gone (then infer again: an answer cached before heatmaps were written has none)."""
    heatmap_key = keyspace.heatmap_beside(from_key)
    mask = store.get(from_key)
    heatmap = store.get(heatmap_key) if heatmap_key is not None else None
    if mask is None or heatmap is None:
        return False
    write_run_images(store, to_key, mask, heatmap)
    return True


def lookup(
    cache: redis.Redis, store: ObjectStore, record: JobRecord, model_sha: str,
    params: dict[str, int], mask_key: str,
) -> ModelAnswer | None:
    """The cached answer with its mask and heatmap copied to ``mask_key`` (this run's) and
    beside it, or None (infer it)."""
    answer = cached_answer(cache, record, model_sha, params)
    if answer is None or not copy_run_images(store, answer.mask_key, mask_key):
        return None
    return answer


def remember_answer(
    cache: redis.Redis, record: JobRecord, model_sha: str, answer: ModelAnswer, ttl_s: int
) -> None:
    """Keep the answer for the tenant's later jobs with the same bytes (the first one written
    stays)."""
    if not model_sha:
        return
    key = keyspace.inference_cache(record.tenant, model_sha, record.image.sha256)
    cache.set(key, answer.model_dump_json(by_alias=True), nx=True, ex=ttl_s)
