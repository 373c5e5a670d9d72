"""Reading jobs: status, long-poll, image, mask, overlay and heatmap, as workers leave
them."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from api.apikeys import add_key
from inspectq.jobs import JobError, Status
from inspectq.keyspace import keys_for
from inspectq.result import InspectionResult
from tests.api.conftest import AUTH, image_bytes, services_of, submit


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


#: A done job's result exactly as a client reads it (every field of InspectionResult).
RESULT = {
    "decision": "REJECT",
    "score": 0.91,
    "defects": [{"class": "scratch", "score": 0.91, "bbox": [1, 2, 10, 12], "area_px": 90,
                 "area_ratio": 0.117188}],
    "width": 32,
    "height": 24,
    "model": {"name": "inspectq_seg", "version": "1", "sha256": "ab" * 32,
              "classes": ["background", "scratch"]},
    "thresholds": {"pass": 0.4, "reject": 0.65},
    "timings": {"ingest_ms": 4.0, "queue_wait_ms": 3.0, "s3_get_ms": 2.0, "preprocess_ms": 1.5,
                "triton_ms": 20.0, "postprocess_ms": 1.0, "record_ms": 2.5, "total_ms": 30.0},
    "quality": {"issues": [], "detail": ""},
    "ood_score": 0.31,
    "review_reasons": [],
    "cache_hit": False,
}


@pytest.fixture
def job_id(client: FlaskClient) -> str:
    response = submit(client, image_bytes(), line="L9", metadata='{"lot": 5}')
    assert response.status_code == 202
    return response.json["id"]


def test_a_queued_job(client: FlaskClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200
    body = response.json
    assert body["id"] == job_id and body["status"] == "queued" and body["line"] == "L9"
    assert body["metadata"] == {"lot": 5}
    assert body["created_at"] and body["updated_at"]
    assert "result" not in body and "error" not in body and "tenant" not in body


def test_a_done_job_shows_its_result_and_images(
    app: Flask, client: FlaskClient, job_id: str
) -> None:
    svc = services_of(app)
    for suffix in ("image", "mask", "overlay", "heatmap"):
        response = client.get(f"/v1/jobs/{job_id}/{suffix}", headers=AUTH)
        assert response.status_code == 409 and response.json["error"]["code"] == "not_ready"
        assert response.headers["Retry-After"]

    svc.jobs.update(job_id, status=Status.PROCESSING)
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).json["status"] == "processing"

    class_map = Image.new("L", (32, 24), 0)
    class_map.paste(1, (1, 2, 10, 12))  # the scratch of RESULT
    mask = png_of(class_map)
    svc.store.put(keys_for(job_id).mask, mask, "image/png")
    svc.jobs.finish(job_id, result=InspectionResult.model_validate(RESULT))

    body = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json
    assert body["status"] == "done" and body["result"] == RESULT
    got_mask = client.get(f"/v1/jobs/{job_id}/mask", headers=AUTH)
    assert got_mask.status_code == 200 and got_mask.mimetype == "image/png"
    assert got_mask.data == mask
    # The overlay is drawn on its first request from the stored image and mask, then kept.
    assert svc.store.get(keys_for(job_id).overlay) is None
    got_overlay = client.get(f"/v1/jobs/{job_id}/overlay", headers=AUTH)
    assert got_overlay.status_code == 200 and got_overlay.mimetype == "image/png"
    drawn = Image.open(io.BytesIO(got_overlay.data))
    assert drawn.size == (32, 24) and drawn.getpixel((20, 20)) == (0, 0, 0)
    assert drawn.getpixel((0, 23)) == (220, 30, 30)  # the border, in REJECT's colour
    assert svc.store.get(keys_for(job_id).overlay) == got_overlay.data
    assert client.get(f"/v1/jobs/{job_id}/overlay", headers=AUTH).data == got_overlay.data
    # Its mask has the key of before per-run masks: no heatmap was written beside it.
    response = client.get(f"/v1/jobs/{job_id}/heatmap", headers=AUTH)
    assert response.status_code == 404 and response.json["error"]["code"] == "no_artifact"


def test_the_image_is_served_upright_in_8_bit_rgb(app: Flask, client: FlaskClient) -> None:
    sideways = Image.new("RGBA", (32, 24), (0, 0, 255, 128))
    sideways.paste((255, 0, 0, 255), (0, 0, 16, 24))  # the left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view
    buffer = io.BytesIO()
    sideways.save(buffer, "PNG", exif=exif)
    job_id = submit(client, buffer.getvalue(), line="L9").json["id"]
    services_of(app).jobs.finish(job_id, result=InspectionResult.model_validate(RESULT))
    response = client.get(f"/v1/jobs/{job_id}/image", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "image/png"
    shown = Image.open(io.BytesIO(response.data))
    assert shown.mode == "RGB" and shown.size == (24, 32)
    assert shown.getpixel((12, 4)) == (255, 0, 0) and shown.getpixel((12, 28)) == (0, 0, 255)


def test_the_heatmap_is_the_one_written_beside_the_runs_mask(
    app: Flask, client: FlaskClient, job_id: str
) -> None:
    svc = services_of(app)
    mask_key = keys_for(job_id).run_mask("r1")
    heatmap = png_of(Image.new("L", (32, 24), 200))
    svc.store.put(mask_key, png_of(Image.new("L", (32, 24), 0)), "image/png")
    svc.store.put(keys_for(job_id).prefix + "heatmap-r1.png", heatmap, "image/png")
    svc.store.put(keys_for(job_id).prefix + "heatmap-r2.png", b"another run's", "image/png")
    svc.jobs.finish(job_id, result=InspectionResult.model_validate(RESULT), mask_key=mask_key)
    response = client.get(f"/v1/jobs/{job_id}/heatmap", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == heatmap


def test_a_failed_job_shows_its_reason_and_has_no_images(
    app: Flask, client: FlaskClient, job_id: str
) -> None:
    services_of(app).jobs.finish(
        job_id, error=JobError(code="undecodable", message="OpenCV could not decode it")
    )
    body = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json
    assert body["status"] == "failed"
    assert body["error"] == {"code": "undecodable", "message": "OpenCV could not decode it"}
    for suffix in ("image", "mask", "heatmap"):
        response = client.get(f"/v1/jobs/{job_id}/{suffix}", headers=AUTH)
        assert response.status_code == 404 and response.json["error"]["code"] == "no_artifact"


def test_long_poll_returns_when_the_job_ends(
    app: Flask, client: FlaskClient, job_id: str
) -> None:
    jobs = services_of(app).jobs
    result = InspectionResult.model_validate(RESULT)
    threading.Timer(0.3, lambda: jobs.finish(job_id, result=result)).start()
    started = time.monotonic()
    body = client.get(f"/v1/jobs/{job_id}?wait=4", headers=AUTH).json
    assert body["status"] == "done"
    assert time.monotonic() - started < 3


def test_long_poll_is_capped_at_max_wait(make_app, job_id: str) -> None:
    client = make_app(max_wait_s=0.5).test_client()
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}?wait=30", headers=AUTH)
    assert response.status_code == 200 and response.json["status"] == "queued"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("wait", ["-1", "nan", "soon"])
def test_bad_wait_is_400(client: FlaskClient, job_id: str, wait: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}?wait={wait}", headers=AUTH)
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_request"


def test_another_tenants_job_is_404(app: Flask, client: FlaskClient, job_id: str) -> None:
    other_key, _ = add_key(Path(services_of(app).settings.api_keys_file), "acme")
    other = {"Authorization": f"Bearer {other_key}"}
    for suffix in ("", "/image", "/mask", "/overlay", "/heatmap"):
        response = client.get(f"/v1/jobs/{job_id}{suffix}", headers=other)
        assert response.status_code == 404
        assert response.json["error"]["code"] == "job_not_found"
    # ...while its owner still sees it.
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 200
