"""Stage 7: record the outcome: the mask PNG to S3, then the job's one result.

The overlay is not drawn here: it is a view of the durable record (image, mask, result), so
the API renders it on its first request and keeps it (``api.overlay``).

``JobStore.finish`` writes the result with a conditional S3 put, so a redelivered job can
never record a second, different outcome, and a lost Redis never loses a result.

This module also keeps the **inference cache**: the same image bytes under the same model
are inferred once. The model's answer (score, regions, size, and which job's S3 objects hold
the mask) is kept in Redis at ``inspectq:dedup:<model sha256>:<image sha256>``
(with the results' TTL), together with the tiling parameters it was made with. A later job
with the same image copies the mask and reuses the regions and score; its decision is still
made from its own thresholds. The cache lives in Redis, not S3, because it is only a cache:
losing it costs one inference, while an S3 lookup and write would cost every new image two
object-store round trips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from inspectq.jobs import JobRecord, JobStore
from inspectq.storage import ObjectStore, keys_for
from workers.postprocess import Region

DEDUP_PREFIX = "inspectq:dedup:"


@dataclass(frozen=True)
class ModelAnswer:
    """What inference concluded about one image, independent of any job's thresholds."""

    score: float
    regions: list[Region]
    width: int
    height: int
    source_job: str  # the job whose S3 objects hold mask.png
    params: dict[str, int]  # tiling settings the answer was computed with

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "regions": [region.to_json() for region in self.regions],
            "width": self.width,
            "height": self.height,
            "source_job": self.source_job,
            "params": self.params,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelAnswer:
        return cls(
            score=data["score"],
            regions=[Region.from_json(item) for item in data["regions"]],
            width=data["width"],
            height=data["height"],
            source_job=data["source_job"],
            params=data["params"],
        )


def _dedup_key(model_sha: str, image_sha: str) -> str:
    return f"{DEDUP_PREFIX}{model_sha}:{image_sha}"


def cached_answer(
    cache: redis.Redis, model_sha: str, image_sha: str, params: dict[str, int]
) -> ModelAnswer | None:
    """The earlier answer for these bytes and model, if it was made with the same tiling."""
    if not model_sha:
        return None  # a model without a digest cannot be told apart from the next one
    data = cache.get(_dedup_key(model_sha, image_sha))
    if data is None:
        return None
    answer = ModelAnswer.from_json(json.loads(data))
    return answer if answer.params == params else None


def remember_answer(
    cache: redis.Redis, model_sha: str, image_sha: str, answer: ModelAnswer, ttl_s: int
) -> None:
    """Keep the answer for later jobs with the same bytes (the first one written stays)."""
    if not model_sha:
        return
    cache.set(_dedup_key(model_sha, image_sha), json.dumps(answer.to_json()), nx=True, ex=ttl_s)


def write_mask(store: ObjectStore, job_id: str, mask: bytes) -> None:
    store.put(keys_for(job_id).mask, mask, "image/png")


def copy_mask(store: ObjectStore, from_job: str, to_job: str) -> bool:
    """Copy another job's mask; False when it is gone (then infer again)."""
    if from_job == to_job:
        return True
    mask = store.get(keys_for(from_job).mask)
    if mask is None:
        return False
    write_mask(store, to_job, mask)
    return True


def record_result(jobs: JobStore, record: JobRecord, result: dict[str, Any]) -> JobRecord:
    """Write the result; returns the job's outcome (the first one, if another was first)."""
    return jobs.finish(record.id, result=result, record=record)
