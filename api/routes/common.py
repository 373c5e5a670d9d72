"""Pieces every ``/v1`` route shares: the accepted-job response, request headers, errors."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request
from pydantic import ValidationError

from api.errors import ApiError
from api.idempotency import check_key
from api.ingest import Accepted
from api.schemas import JobAccepted
from api.services import services
from inspectq.config import Settings
from inspectq.jobs import JobRecord, is_job_id


def raise_validation_error(
    req: Any, resp: Any, error: Exception | None, instance: Any, adapter: Any
) -> None:
    """Spectree's ``before`` hook: render its validation failures as our JSON error."""
    if not isinstance(error, ValidationError):
        return
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    named = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'request'}: {problem['msg']}"
        for problem in problems
    )
    raise ApiError(400, "invalid_request", f"Invalid request: {named}", details=problems)


def idempotency_key() -> str | None:
    value = request.headers.get("Idempotency-Key")
    return None if value is None else check_key(value)


def status_url(settings: Settings, job_id: str) -> str:
    """The job's URL under the configured public base (never the request's Host header)."""
    return f"{settings.public_url.rstrip('/')}/v1/jobs/{job_id}"


def accepted_body(settings: Settings, accepted: Accepted) -> dict[str, Any]:
    url = status_url(settings, accepted.job_id)
    return JobAccepted(id=accepted.job_id, status=accepted.status,
                       status_url=url).model_dump(mode="json")


def accepted_response(settings: Settings, accepted: Accepted) -> Response:
    response = jsonify(accepted_body(settings, accepted))
    response.status_code = 202
    response.headers["Location"] = status_url(settings, accepted.job_id)
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"No job {job_id!r} for this API key.")


def unsupported_body() -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        "Send multipart/form-data with an `image` file, or the raw image with an image/*"
        " Content-Type.",
    )


def own_job(job_id: str) -> JobRecord:
    """The caller's job, or 404 (for malformed ids, unknown ids and other tenants' jobs)."""
    if not is_job_id(job_id):
        raise not_found(job_id)
    record = services().jobs.get(job_id)
    if record is None or record.tenant != g.tenant:
        raise not_found(job_id)
    return record
