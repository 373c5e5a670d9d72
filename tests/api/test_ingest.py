"""Accepting images: stored in S3, recorded, enqueued by id; idempotent; batches."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from inspectq.jobs import Status, is_batch_id
from inspectq.keyspace import keys_for
from tests.api.conftest import AUTH, image_bytes, queued_job_ids, services_of, submit


def test_multipart_upload_is_stored_recorded_and_enqueued(
    app: Flask, client: FlaskClient, redis_client: redis.Redis
) -> None:
    data = image_bytes("JPEG", (40, 30))
    before = time.time()
    response = submit(client, data, line="line-7", camera="cam.2",
                      metadata=json.dumps({"shift": "night", "n": 3}))
    assert response.status_code == 202, response.json
    body = response.json
    job_id = body["id"]
    assert body["status"] == "queued"
    assert body["status_url"] == f"http://127.0.0.1:8080/v1/jobs/{job_id}"  # public_url
    assert response.headers["Location"] == body["status_url"]

    svc = services_of(app)
    assert svc.store.get(keys_for(job_id).image) == data
    record = svc.jobs.get(job_id)
    assert record is not None and record.status is Status.QUEUED
    assert record.tenant == "default"
    assert (record.line, record.camera) == ("line-7", "cam.2")
    assert record.metadata == {"shift": "night", "n": 3}
    assert record.image.content_type == "image/jpeg" and record.image.bytes == len(data)
    assert record.thresholds.pass_threshold == svc.settings.pass_threshold
    assert record.thresholds.reject_threshold == svc.settings.reject_threshold
    assert before <= record.enqueued_at <= time.time()
    assert record.ingest_ms > 0
    # The durable record is in S3 even if Redis forgets it.
    redis_client.delete(f"inspectq:job:{job_id}")
    assert svc.jobs.get(job_id).line == "line-7"
    # The queue carries the job id and nothing else.
    assert queued_job_ids(redis_client) == [job_id]


def test_raw_body_upload_with_query_options(
    app: Flask, client: FlaskClient, redis_client: redis.Redis
) -> None:
    data = image_bytes("PNG")
    response = client.post(
        "/v1/jobs?line=L1&pass_threshold=0.2&reject_threshold=0.9",
        data=data,
        headers={**AUTH, "Content-Type": "image/png"},
    )
    assert response.status_code == 202, response.json
    job_id = response.json["id"]
    record = services_of(app).jobs.get(job_id)
    assert record.line == "L1"
    assert (record.thresholds.pass_threshold, record.thresholds.reject_threshold) == (0.2, 0.9)
    assert queued_job_ids(redis_client) == [job_id]


def test_nested_metadata_within_the_limits_is_kept(client: FlaskClient, redis_client) -> None:
    metadata = {"lot": {"id": [1, 2], "shift": {"name": "B", "crew": [{"n": 1}]}}}  # 5 deep
    response = submit(client, image_bytes(), metadata=json.dumps(metadata))
    assert response.status_code == 202, response.json
    job = client.get(f"/v1/jobs/{response.json['id']}", headers=AUTH).json
    assert job["metadata"] == metadata


def test_status_url_uses_public_url_never_the_host_header(
    make_app, redis_client: redis.Redis
) -> None:
    client = make_app(public_url="https://inspect.example/").test_client()
    response = submit(client, image_bytes(), headers={"Host": "evil.example",
                                                      "X-Forwarded-Host": "evil.example"})
    assert response.json["status_url"] == f"https://inspect.example/v1/jobs/{response.json['id']}"
    assert response.headers["Location"] == response.json["status_url"]
    batch = client.post("/v1/batches", data={"images": [(io.BytesIO(image_bytes()), "a.png")]},
                        headers={**AUTH, "Host": "evil.example"})
    assert batch.json["jobs"][0]["status_url"].startswith("https://inspect.example/v1/jobs/")


def test_idempotency_key_returns_the_same_job(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    data = image_bytes()
    first = submit(client, data, headers={"Idempotency-Key": "upload-42"})
    again = submit(client, data, headers={"Idempotency-Key": "upload-42"})
    assert first.status_code == again.status_code == 202
    assert first.json["id"] == again.json["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert queued_job_ids(redis_client) == [first.json["id"]]

    other = submit(client, image_bytes(size=(5, 5)), headers={"Idempotency-Key": "upload-42"})
    assert other.status_code == 422
    assert other.json["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize("change", [
    {"line": "line-9"}, {"camera": "cam-2"}, {"pass_threshold": "0.2"},
    {"reject_threshold": "0.9"}, {"metadata": '{"lot": 2}'},
])
def test_same_key_with_other_parameters_is_refused(
    client: FlaskClient, redis_client: redis.Redis, change: dict[str, str]
) -> None:
    data = image_bytes()
    first = submit(client, data, metadata='{"lot": 1}', headers={"Idempotency-Key": "p"})
    assert first.status_code == 202
    same = submit(client, data, metadata='{ "lot" : 1 }', headers={"Idempotency-Key": "p"})
    assert same.status_code == 202 and same.json["id"] == first.json["id"]  # same JSON value
    fields = {"metadata": '{"lot": 1}', **change}
    other = submit(client, data, headers={"Idempotency-Key": "p"}, **fields)
    assert other.status_code == 422, other.json
    assert other.json["error"]["code"] == "idempotency_key_reused"


def test_a_replay_answers_the_jobs_current_status(
    app: Flask, client: FlaskClient, redis_client: redis.Redis
) -> None:
    from inspectq.jobs import JobError

    data = image_bytes()
    first = submit(client, data, headers={"Idempotency-Key": "done-1"})
    services_of(app).jobs.finish(first.json["id"], error=JobError(code="x", message="y"))
    again = submit(client, data, headers={"Idempotency-Key": "done-1"})
    assert again.json["id"] == first.json["id"] and again.json["status"] == "failed"


def test_batch_replays_whole_and_partial(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    images = [image_bytes("PNG", (10 + i, 10)) for i in range(3)]

    def batch(count: int) -> Any:
        return client.post(
            "/v1/batches",
            data={"images": [(io.BytesIO(d), f"{i}.png") for i, d in enumerate(images[:count])]},
            headers={**AUTH, "Idempotency-Key": "b-1"})

    partial = batch(1)  # as if the first request got one image in before an outage
    assert partial.status_code == 202 and "Idempotent-Replayed" not in partial.headers
    whole = batch(3)
    assert whole.status_code == 202, whole.json
    ids = [job["id"] for job in whole.json["jobs"]]
    assert len(ids) == len(set(ids)) == 3 and ids[0] == partial.json["jobs"][0]["id"]
    again = batch(3)
    assert [job["id"] for job in again.json["jobs"]] == ids
    assert again.headers["Idempotent-Replayed"] == "true"
    # One batch across the retries: every job, replayed or new, carries its id.
    batch_id = partial.json["batch_id"]
    assert is_batch_id(batch_id) and whole.json["batch_id"] == again.json["batch_id"] == batch_id
    for job_id in ids:
        assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).json["batch_id"] == batch_id


def test_concurrent_uploads_with_one_key_make_one_job(
    app: Flask, redis_client: redis.Redis
) -> None:
    data = image_bytes("BMP")

    def upload(_: int) -> tuple[int, str | None]:
        response = submit(app.test_client(), data, headers={"Idempotency-Key": "race"})
        return response.status_code, (response.json or {}).get("id")

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(upload, range(6)))
    ids = {job_id for status, job_id in results if status == 202}
    # Every request either got the one job or was told the key is mid-flight (409).
    assert all(status in (202, 409) for status, _ in results), results
    assert len(ids) == 1
    assert queued_job_ids(redis_client) == list(ids)


def test_idempotency_keys_are_per_tenant(app: Flask, redis_client: redis.Redis) -> None:
    from api.apikeys import add_key

    acme_key, _ = add_key(__import__("pathlib").Path(services_of(app).settings.api_keys_file),
                          "acme")
    client = app.test_client()
    data = image_bytes()
    mine = submit(client, data, headers={"Idempotency-Key": "k"})
    theirs = submit(client, data, headers={"Idempotency-Key": "k",
                                           "Authorization": f"Bearer {acme_key}"})
    assert mine.status_code == theirs.status_code == 202
    assert mine.json["id"] != theirs.json["id"]


def test_batch_makes_one_job_per_image_in_order(
    app: Flask, client: FlaskClient, redis_client: redis.Redis
) -> None:
    images = [image_bytes("PNG", (10 + i, 10)) for i in range(3)]
    response = client.post(
        "/v1/batches",
        data={"images": [(io.BytesIO(d), f"{i}.png") for i, d in enumerate(images)],
              "line": "L2"},
        headers=AUTH,
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.json
    ids = [job["id"] for job in response.json["jobs"]]
    assert len(set(ids)) == 3
    assert is_batch_id(response.json["batch_id"])
    svc = services_of(app)
    for job_id, data in zip(ids, images, strict=True):
        assert svc.store.get(keys_for(job_id).image) == data
        assert svc.jobs.get(job_id).line == "L2"
    assert queued_job_ids(redis_client) == ids


def test_single_image_batch_under_the_image_field(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    response = client.post(
        "/v1/batches", data={"image": (io.BytesIO(image_bytes()), "a.png")},
        headers=AUTH, content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.json
    assert len(response.json["jobs"]) == 1


def test_oversized_batch_is_413_and_enqueues_nothing(
    make_app, redis_client: redis.Redis
) -> None:
    client = make_app(max_batch_images=2).test_client()
    response = client.post(
        "/v1/batches",
        data={"images": [(io.BytesIO(image_bytes()), f"{i}.png") for i in range(3)]},
        headers=AUTH, content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "too_many_images"
    assert queued_job_ids(redis_client) == []


def test_one_bad_image_refuses_the_whole_batch(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    parts = [image_bytes(), b"not an image", image_bytes()]
    response = client.post(
        "/v1/batches",
        data={"images": [(io.BytesIO(d), f"{i}.png") for i, d in enumerate(parts)]},
        headers=AUTH, content_type="multipart/form-data",
    )
    assert response.status_code == 415
    assert response.json["error"]["details"] == {"index": 1}
    assert response.json["error"]["message"].startswith("Image 1:")
    assert queued_job_ids(redis_client) == []
