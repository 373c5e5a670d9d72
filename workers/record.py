"""Stage 8: record the job's one outcome (S3 durable, Redis cache, the ending published).

The mask is already stored (stage 6). The overlay is not drawn here: it is a view of the
durable record (image, mask, result), so the API renders it on its first request and keeps
it (``api.overlay``).

``JobStore.finish`` writes the result with a conditional S3 put, so a redelivered job can
never record a second, different outcome, and a lost Redis never loses a result.
"""

from __future__ import annotations

from inspectq.jobs import JobRecord, JobStore
from inspectq.result import InspectionResult


def record_result(jobs: JobStore, record: JobRecord, result: InspectionResult) -> JobRecord:
    """Write the result; returns the job's outcome (the first one, if another was first)."""
    return jobs.finish(record.id, result=result, record=record)
