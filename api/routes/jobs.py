"""``/v1/jobs``: submit one image, read a job's status, fetch its image, mask, overlay and
heatmap."""

from __future__ import annotations

import logging
import time
from typing import Literal

from flask import Blueprint, Response, g, jsonify, request
from spectree import Response as Responses
from spectree import SpecTree

from api.errors import ApiError
from api.images import validate_image
from api.ingest import accept, check_callback, check_capacity, resolve_thresholds
from api.overlay import render_image, render_overlay
from api.routes.common import (
    accepted_response,
    idempotency_key,
    not_found,
    own_job,
    unsupported_body,
)
from api.schemas import ErrorOut, JobAccepted, JobForm, JobOptions, JobOut, WaitQuery
from api.services import services
from api.uploads import read_part, read_raw_body, set_body_limit
from inspectq.jobs import JobRecord, Status
from inspectq.keyspace import keys_for
from inspectq.storage import StorageUnavailable

log = logging.getLogger(__name__)

SECURITY = {"bearer": []}

_ERRORS = {
    "HTTP_400": ErrorOut,
    "HTTP_401": ErrorOut,
    "HTTP_404": ErrorOut,
    "HTTP_429": ErrorOut,
    "HTTP_503": ErrorOut,
}


def add_job_routes(bp: Blueprint, spec: SpecTree) -> None:
    @bp.post("/jobs")
    @spec.validate(
        query=JobOptions,
        form=JobForm,
        resp=Responses(
            HTTP_202=JobAccepted, HTTP_409=ErrorOut, HTTP_413=ErrorOut, HTTP_415=ErrorOut,
            HTTP_422=ErrorOut, **_ERRORS,
        ),
        tags=["jobs"],
        security=SECURITY,
    )
    def create_job() -> Response:
        """Submit one image for inspection.

        Send it as the multipart field `image` (options as form fields), or as the raw body
        with an `image/*` Content-Type (options as query parameters). Answers 202 with the
        job id; poll `status_url`. An `Idempotency-Key` header makes retries safe: the same
        key and image return the same job.
        """
        started = time.perf_counter()
        svc = services()
        limit = svc.settings.max_upload_bytes
        if request.mimetype == "multipart/form-data":
            form: JobForm = request.context.form
            options: JobOptions = form
            data = read_part(form.image, limit)
        elif request.mimetype.startswith("image/"):
            options = request.context.query
            data = read_raw_body(limit)
        else:
            raise unsupported_body()
        thresholds = resolve_thresholds(svc, options)
        check_callback(svc, options)
        key = idempotency_key()
        image = validate_image(data, svc.settings.max_image_pixels)
        check_capacity(svc, 1)
        accepted = accept(
            svc,
            tenant=g.tenant,
            image=image,
            options=options,
            thresholds=thresholds,
            idempotency_key=key,
            started=started,
        )
        return accepted_response(svc.settings, accepted)

    @bp.before_request
    def _limit_job_body() -> None:
        if request.endpoint == "v1.create_job":
            set_body_limit(services().settings, images=1)

    @bp.get("/jobs/<job_id>")
    @spec.validate(query=WaitQuery, resp=Responses(HTTP_200=JobOut, **_ERRORS), tags=["jobs"],
                   security=SECURITY)
    def get_job(job_id: str) -> Response:
        """A job's status; `?wait=N` long-polls up to N seconds (at most max_wait_s) for it
        to end. Unknown ids, and other tenants' jobs, are 404."""
        svc = services()
        query: WaitQuery = request.context.query
        own_job(job_id)
        record = svc.jobs.wait(job_id, min(query.wait, svc.settings.max_wait_s))
        if record is None:
            raise not_found(job_id)
        return jsonify(record.public())

    @bp.get("/jobs/<job_id>/mask")
    @spec.validate(resp=Responses(HTTP_409=ErrorOut, **_ERRORS), tags=["jobs"],
                   security=SECURITY)
    def get_mask(job_id: str) -> Response:
        """The defect mask (PNG) of a done job. 409 `not_ready` while the job has not
        ended; 404 for unknown jobs and for failed jobs, which have no mask."""
        return _artifact(job_id, "mask")

    @bp.get("/jobs/<job_id>/overlay")
    @spec.validate(resp=Responses(HTTP_409=ErrorOut, **_ERRORS), tags=["jobs"],
                   security=SECURITY)
    def get_overlay(job_id: str) -> Response:
        """The image with its defects drawn on it (PNG); same rules as the mask. Rendered
        on the first request from the stored image and mask, then kept in S3."""
        return _artifact(job_id, "overlay")

    @bp.get("/jobs/<job_id>/heatmap")
    @spec.validate(resp=Responses(HTTP_409=ErrorOut, **_ERRORS), tags=["jobs"],
                   security=SECURITY)
    def get_heatmap(job_id: str) -> Response:
        """The per-pixel defect probability (8-bit grey PNG: value v is a probability of
        v/255; images longer than 1024 px get it scaled down to that long side); same rules
        as the mask. Jobs inspected before heatmaps were stored have none (404)."""
        return _artifact(job_id, "heatmap")

    @bp.get("/jobs/<job_id>/image")
    @spec.validate(resp=Responses(HTTP_409=ErrorOut, **_ERRORS), tags=["jobs"],
                   security=SECURITY)
    def get_image(job_id: str) -> Response:
        """The inspected image as the model saw it (PNG: upright, 8-bit RGB), for viewers;
        same rules as the mask. Drawn from the stored upload on each request."""
        return _artifact(job_id, "image")


def _artifact(job_id: str, which: Literal["image", "mask", "overlay", "heatmap"]) -> Response:
    record = own_job(job_id)
    if not record.status.terminal:
        raise ApiError(
            409,
            "not_ready",
            f"Job {job_id} is {record.status.value}; its images exist once it is done.",
            headers={"Retry-After": "1"},
        )
    if record.status is Status.FAILED:
        raise ApiError(404, "no_artifact", f"Job {job_id} failed and has no images.")
    store, keys = services().store, keys_for(job_id)
    if which == "image":
        upload = store.get(record.image.key)
        data = render_image(upload) if upload is not None else None
    elif which == "mask":
        data = store.get(record.mask)
    elif which == "heatmap":
        data = store.get(record.heatmap) if record.heatmap is not None else None
    else:
        data = store.get(keys.overlay) or _render_overlay(record)
    if data is None:
        raise ApiError(404, "no_artifact", f"Job {job_id} has no such image.")
    return Response(data, mimetype="image/png")


def _render_overlay(record: JobRecord) -> bytes | None:
    """Render a done job's overlay from its stored image and mask, and keep it in S3."""
    store, keys = services().store, keys_for(record.id)
    image, mask = store.get(record.image.key), store.get(record.mask)
    if image is None or mask is None or record.result is None:
        return None
    data = render_overlay(image, mask, record.result)
    try:
        store.put(keys.overlay, data, "image/png")
    except StorageUnavailable:
        log.warning("overlay of %s served but not stored (S3 unavailable)", record.id)
    return data
