"""The inspection record, read from the results index (``inspectq.index``): listings, CSV or
JSONL exports, per-line statistics, operator feedback, and batches.

Every read is scoped to the caller's tenant. The index is a query copy of the job records
(S3 is the durable one); while its database is unreachable these routes answer 503
``index_unavailable`` and everything else keeps working.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, g, jsonify, request
from spectree import Response as Responses
from spectree import SpecTree

from api.errors import ApiError
from api.routes.common import own_job
from api.schemas import (
    BatchOut,
    DeliveriesOut,
    ErrorOut,
    ExportQuery,
    JobFilterQuery,
    JobListQuery,
    JobOut,
    JobPage,
    LinesOut,
    LinesQuery,
    LineStatsOut,
    StatsQuery,
)
from api.services import Services, services
from inspectq import keyspace
from inspectq.feedback import FeedbackIn
from inspectq.index import IndexUnavailable, JobFilter
from inspectq.index.outbox import Outbox
from inspectq.jobs import JobRecord, Status, is_batch_id
from inspectq.result import Decision

SECURITY = {"bearer": []}
_ERRORS = {"HTTP_400": ErrorOut, "HTTP_401": ErrorOut, "HTTP_429": ErrorOut,
           "HTTP_503": ErrorOut}
#: A line's statistics default to the last day.
DEFAULT_STATS_RANGE = timedelta(days=1)


def _filter(query: JobFilterQuery) -> JobFilter:
    return JobFilter(**query.model_dump(include=set(JobFilterQuery.model_fields),
                                        exclude_none=True))


def add_results_routes(bp: Blueprint, spec: SpecTree) -> None:
    @bp.get("/jobs")
    @spec.validate(query=JobListQuery, resp=Responses(HTTP_200=JobPage, **_ERRORS),
                   tags=["results"], security=SECURITY)
    def list_jobs() -> Response:
        """The caller's ended jobs, newest first, filtered; keyset pagination: pass
        `next_cursor` back as `cursor` for the next page (null on the last). Jobs still
        queued or running are not listed (read them by id)."""
        query: JobListQuery = request.context.query
        try:
            page = services().index.list_jobs(g.tenant, _filter(query), query.limit,
                                              query.cursor)
        except ValueError as error:
            raise ApiError(400, "invalid_cursor", str(error)) from error
        return jsonify({"jobs": page.jobs, "next_cursor": page.next_cursor})

    @bp.get("/exports")
    @spec.validate(query=ExportQuery, resp=Responses(HTTP_200=None, **_ERRORS),
                   tags=["results"], security=SECURITY)
    def export() -> Response:
        """Every matching job, one row each, newest first: `format=csv` (a header row, the
        columns documented in README) or `jsonl` (one JSON object per line). Streamed in
        constant memory, so a month of a line is fine."""
        query: ExportQuery = request.context.query
        svc = services()
        rows = svc.index.iter_rows(g.tenant, _filter(query))
        first = next(rows, None)  # an unreachable index is a 503 before anything is sent
        body = _csv(svc, first, rows) if query.format == "csv" else _jsonl(first, rows)
        kind = "text/csv" if query.format == "csv" else "application/x-ndjson"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return Response(body, mimetype=kind, headers={
            "Content-Disposition": f'attachment; filename="inspectq-{stamp}.{query.format}"'})

    @bp.get("/lines")
    @spec.validate(query=LinesQuery, resp=Responses(HTTP_200=LinesOut, **_ERRORS),
                   tags=["results"], security=SECURITY)
    def list_lines() -> Response:
        """The caller's production lines: cameras, last job, counts per decision."""
        query: LinesQuery = request.context.query
        return jsonify({"lines": services().index.lines(g.tenant, query.since)})

    @bp.get("/lines/<line>/stats")
    @spec.validate(query=StatsQuery, resp=Responses(HTTP_200=LineStatsOut, **_ERRORS),
                   tags=["results"], security=SECURITY)
    def line_stats(line: str) -> Response:
        """A line's counts per time bucket (minute, hour or day, UTC) and per camera over
        [since, until): PASS, REVIEW, REJECT, failed, the REVIEW and REJECT rates and
        images per minute; what a chart needs. Default range: the last 24 hours."""
        query: StatsQuery = request.context.query
        until = query.until or datetime.now(UTC)
        since = query.since or until - DEFAULT_STATS_RANGE
        try:
            stats = services().index.line_stats(g.tenant, line, since, until, query.bucket)
        except ValueError as error:
            raise ApiError(400, "invalid_range", str(error)) from error
        return jsonify(stats)

    @bp.post("/jobs/<job_id>/feedback")
    @spec.validate(json=FeedbackIn, resp=Responses(HTTP_201=JobOut, HTTP_404=ErrorOut,
                                                   HTTP_409=ErrorOut, **_ERRORS),
                   tags=["results"], security=SECURITY)
    def give_feedback(job_id: str) -> Response:
        """An operator confirms the decision of a done job, or corrects it (the right
        decision and/or the defects as boxes). Every entry is kept; the latest counts.
        Answers the job with its `feedback`. 409 while the job has not ended, and for a
        failed job (nothing to confirm)."""
        svc = services()
        record = _own_ended_job(svc, job_id)
        updated = svc.jobs.add_feedback(record, request.context.json)
        _index_feedback(svc, updated)
        response = jsonify(updated.public())
        response.status_code = 201
        return response

    @bp.get("/jobs/<job_id>/deliveries")
    @spec.validate(resp=Responses(HTTP_200=DeliveriesOut, HTTP_404=ErrorOut, **_ERRORS),
                   tags=["results"], security=SECURITY)
    def get_deliveries(job_id: str) -> Response:
        """The job's callback deliveries: URL, state (pending, delivered, failed),
        attempts, the last status or error, when it is tried next."""
        svc = services()
        own_job(job_id)
        outbox = Outbox(svc.index, svc.settings.callback_retry_hours)
        return jsonify({"deliveries": outbox.of_job(g.tenant, job_id)})

    @bp.get("/batches/<batch_id>")
    @spec.validate(resp=Responses(HTTP_200=BatchOut, HTTP_404=ErrorOut, **_ERRORS),
                   tags=["jobs"], security=SECURITY)
    def get_batch(batch_id: str) -> Response:
        """A batch's jobs in submission order, with counts per status and per decision."""
        svc = services()
        records = _batch_records(svc, batch_id)
        status = Counter(record.status.value for record in records)
        decision = Counter(record.result.decision.value for record in records
                           if record.result is not None)
        return jsonify({
            "batch_id": batch_id,
            "jobs": [record.public() for record in records],
            "counts": {"status": {s.value: status[s.value] for s in Status},
                       "decision": {d.value: decision[d.value] for d in Decision}},
        })


def _own_ended_job(svc: Services, job_id: str) -> JobRecord:
    record = own_job(job_id)
    if record.status is not Status.DONE:
        raise ApiError(409, "not_done", f"Job {job_id} is {record.status.value}: feedback is"
                       " for done jobs (a decision to confirm or correct).")
    return record


def _index_feedback(svc: Services, record: JobRecord) -> None:
    """Write the newest entry to the index now; when the job is not indexed yet, or the
    database is down, hand the job to the indexer (its record carries the feedback)."""
    entry = record.feedback[-1]
    created = datetime.fromisoformat(record.created_at.replace("Z", "+00:00"))
    try:
        svc.index.record_feedback(record.tenant, record.id, created, entry.for_index())
    except (KeyError, IndexUnavailable):
        svc.redis.rpush(keyspace.INDEX_QUEUE, record.id)


def _batch_records(svc: Services, batch_id: str) -> list[JobRecord]:
    if not is_batch_id(batch_id):
        raise _no_batch(batch_id)
    manifest = svc.store.get_json(keyspace.batch_manifest(g.tenant, batch_id))
    if manifest is not None:
        job_ids = manifest["jobs"]
    else:  # the manifest could not be written: the index knows the ended jobs
        found = svc.index.batch(g.tenant, batch_id)
        job_ids = [] if found is None else [job["id"] for job in found["jobs"]]
    cached = svc.jobs.cached(job_ids)
    records = [cached.get(job_id) or svc.jobs.get(job_id) for job_id in job_ids]
    mine = [record for record in records if record is not None and record.tenant == g.tenant]
    if not mine:
        raise _no_batch(batch_id)
    return mine


def _no_batch(batch_id: str) -> ApiError:
    return ApiError(404, "batch_not_found", f"No batch {batch_id!r} for this API key.")


def _csv(svc: Services, first: dict | None, rows: Iterator[dict]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(svc.index.EXPORT_COLUMNS)
    if first is not None:
        writer.writerow(first.values())
        for count, row in enumerate(rows, 1):
            writer.writerow(row.values())
            if count % 500 == 0:
                yield _drain(buffer)
    yield _drain(buffer)


def _jsonl(first: dict | None, rows: Iterator[dict]) -> Iterator[str]:
    if first is None:
        return
    yield json.dumps(first, separators=(",", ":")) + "\n"
    for row in rows:
        yield json.dumps(row, separators=(",", ":")) + "\n"


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
