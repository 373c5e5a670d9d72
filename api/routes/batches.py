"""``/v1/batches``: many images in one multipart request, one job per image, in order."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from flask import Blueprint, Response, g, jsonify, request
from kombu.exceptions import OperationalError as BrokerError
from redis import RedisError
from spectree import Response as Responses
from spectree import SpecTree
from werkzeug.datastructures import FileStorage

from api.errors import ApiError, unavailable
from api.images import AcceptedImage, validate_image
from api.ingest import Accepted, accept, check_callback, check_capacity, resolve_thresholds
from api.routes.common import accepted_body, idempotency_key, unsupported_body
from api.schemas import BatchAccepted, BatchForm, ErrorOut
from api.services import Services, services
from api.uploads import read_part, set_body_limit
from inspectq import keyspace
from inspectq.jobs import new_batch_id
from inspectq.storage import StorageUnavailable

log = logging.getLogger(__name__)


def add_batch_routes(bp: Blueprint, spec: SpecTree) -> None:
    @bp.post("/batches")
    @spec.validate(
        form=BatchForm,
        resp=Responses(
            HTTP_202=BatchAccepted,
            HTTP_400=ErrorOut,
            HTTP_401=ErrorOut,
            HTTP_409=ErrorOut,
            HTTP_413=ErrorOut,
            HTTP_415=ErrorOut,
            HTTP_422=ErrorOut,
            HTTP_429=ErrorOut,
            HTTP_503=ErrorOut,
        ),
        tags=["jobs"],
        security={"bearer": []},
    )
    def create_batch() -> Response:
        """Submit several images (repeated multipart field `images`, or `image`); the form
        options apply to all. Every image is validated before any is stored: one bad image
        refuses the batch (400/413/415 naming its index). More than max_batch_images is 413.
        With an `Idempotency-Key`, image *i* uses the key `<key>:<i>`.
        """
        started = time.perf_counter()
        svc = services()
        if request.mimetype != "multipart/form-data":
            raise unsupported_body()
        form: BatchForm = request.context.form
        if form.images and form.image:
            raise ApiError(400, "invalid_request", "Use either `images` or `image`, not both.")
        parts = form.images or form.image
        if not parts:
            raise ApiError(400, "no_images", "The batch holds no images.")
        if len(parts) > svc.settings.max_batch_images:
            raise ApiError(
                413,
                "too_many_images",
                f"A batch may hold at most {svc.settings.max_batch_images} images;"
                f" this one has {len(parts)}.",
            )
        thresholds = resolve_thresholds(svc, form)
        check_callback(svc, form)
        key = idempotency_key()
        limit = svc.settings.max_upload_bytes
        # Validate all first, keeping only what was learned: a batch may be many times one
        # image's size, and Werkzeug has the parts spooled to disk, to be re-read one by one.
        checked = [
            replace(_validated(limit, svc.settings.max_image_pixels, part, index), data=b"")
            for index, part in enumerate(parts)
        ]
        check_capacity(svc, len(checked))

        # A retried batch (same Idempotency-Key) must name the same batch, partial or whole.
        batch_id = new_batch_id(None if key is None else f"{g.tenant}\n{key}")
        accepted: list[Accepted] = []
        for index, (part, meta) in enumerate(zip(parts, checked, strict=True)):
            part.stream.seek(0)
            image = replace(meta, data=read_part(part, limit))
            try:
                accepted.append(
                    accept(
                        svc,
                        tenant=g.tenant,
                        image=image,
                        options=form,
                        thresholds=thresholds,
                        idempotency_key=None if key is None else f"{key}:{index}",
                        started=started,
                        batch_id=batch_id,
                    )
                )
            except (StorageUnavailable, RedisError, BrokerError) as error:
                if not accepted:
                    raise
                what = "storage" if isinstance(error, StorageUnavailable) else "queue"
                raise _partial(accepted, what) from error
        _write_manifest(svc, g.tenant, batch_id, [item.job_id for item in accepted])
        response = jsonify({
            "batch_id": batch_id,
            "jobs": [accepted_body(svc.settings, item) for item in accepted],
        })
        response.status_code = 202
        if all(item.replayed for item in accepted):
            response.headers["Idempotent-Replayed"] = "true"
        return response

    @bp.before_request
    def _limit_batch_body() -> None:
        if request.endpoint == "v1.create_batch":
            settings = services().settings
            set_body_limit(settings, images=settings.max_batch_images)


def _write_manifest(svc: Services, tenant: str, batch_id: str, job_ids: list[str]) -> None:
    """Record the batch's jobs for ``GET /v1/batches/<id>``. Best effort: the jobs are
    accepted already, and without the manifest the batch is still found in the results
    index once its jobs end."""
    try:
        svc.store.put_json(keyspace.batch_manifest(tenant, batch_id), {"jobs": job_ids})
    except StorageUnavailable:
        log.warning("batch %s: manifest not written (S3 unavailable)", batch_id)


def _validated(limit: int, max_pixels: int, part: FileStorage, index: int) -> AcceptedImage:
    try:
        return validate_image(read_part(part, limit), max_pixels)
    except ApiError as error:
        error.message = f"Image {index}: {error.message}"
        error.details = {"index": index}
        raise


def _partial(accepted: list[Accepted], what: str) -> ApiError:
    """A 503 that still names the jobs accepted before the outage (they will run)."""
    error = unavailable(what)
    error.message = (
        f"The {what} service became unreachable after {len(accepted)} image(s) were accepted;"
        " those jobs will run, the rest were not accepted. Retry with the same"
        " Idempotency-Key to finish the batch without duplicates."
    )
    error.details = {"accepted": [item.job_id for item in accepted]}
    return error
