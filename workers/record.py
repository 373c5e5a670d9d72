"""Stage 8: record the job's one outcome (S3 durable, Redis cache, the ending published).

The mask is already stored (stage 6), under a key of this run's own; the outcome names it,
so the mask a client reads always belongs to the result it reads. The overlay is not drawn
here: it is a view of the durable record (image, mask, result), so the API renders it on
its first request and keeps it (``api.overlay``).

``JobStore.finish`` writes the result with a conditional S3 put, so a redelivered job can
never record a second, different outcome, and a lost Redis never loses a result.
"""

from __future__ import annotations

from inspectq.jobs import JobRecord, JobStore
from inspectq.result import InspectionResult


def record_result(jobs: JobStore, record: JobRecord, result: InspectionResult,
                  mask_key: str) -> JobRecord:
    """Write the result and the key of its run's mask; returns the job's outcome (the first
    one, mask included, if another run was first)."""
    return jobs.finish(record.id, result=result, mask_key=mask_key, record=record)
