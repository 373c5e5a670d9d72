"""Outages and overload: 503 when S3 or Redis is down, 429 for a full queue or a busy key;
nothing is enqueued in any of them, and no secret reaches a response or the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from flask import Flask
from pydantic import SecretStr

from api.apikeys import add_key
from tests.api.conftest import (
    AUTH,
    DEV_KEY,
    closed_port_url,
    image_bytes,
    queued_job_ids,
    services_of,
    submit,
)
from tests.conftest import TEST_SECRET_KEY


def test_s3_unreachable_is_503_and_nothing_is_enqueued(
    make_app, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(s3_endpoint_url=closed_port_url()).test_client()
    with caplog.at_level(logging.DEBUG):
        response = submit(client, image_bytes())
    assert response.status_code == 503
    assert response.json["error"]["code"] == "storage_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert queued_job_ids(redis_client) == []
    for text in (response.get_data(as_text=True), caplog.text):
        assert TEST_SECRET_KEY not in text and DEV_KEY not in text


def test_s3_refusing_our_credentials_is_500(make_app, redis_client: redis.Redis) -> None:
    """A misconfigured server, not an outage: 500, with nothing of the secret in the body."""
    client = make_app(s3_secret_access_key=SecretStr("wrong-secret")).test_client()
    response = submit(client, image_bytes())
    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"
    assert "wrong-secret" not in response.get_data(as_text=True)
    assert queued_job_ids(redis_client) == []


def test_redis_unreachable_is_503(make_app, redis_client: redis.Redis) -> None:
    dead = closed_port_url("redis") + "/10"
    client = make_app(redis_url=dead, broker_url=dead).test_client()
    response = submit(client, image_bytes())
    assert response.status_code == 503
    assert response.json["error"]["code"] == "queue_unavailable"
    assert response.headers["Retry-After"]
    status = client.get("/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA", headers=AUTH)
    assert status.status_code == 503


def test_broker_unreachable_is_503_and_the_job_is_failed_visibly(
    app: Flask, make_app, redis_client: redis.Redis
) -> None:
    """Redis (records) is up but the broker is not: the job exists, so it is marked failed
    rather than left queued forever."""
    from inspectq.jobs import Status
    from tests.api.conftest import services_of

    broken = make_app(broker_url=closed_port_url("redis") + "/10")
    response = submit(broken.test_client(), image_bytes())
    assert response.status_code == 503
    assert response.json["error"]["code"] == "queue_unavailable"
    assert queued_job_ids(redis_client) == []
    # The only record written is a failed one, with its reason.
    keys = [k.decode() for k in redis_client.keys("inspectq:job:*")]
    assert len(keys) == 1
    record = services_of(app).jobs.get(keys[0].rsplit(":", 1)[1])
    assert record.status is Status.FAILED and record.error.code == "ingest_failed"


def test_full_queue_is_429_and_enqueues_nothing(make_app, redis_client: redis.Redis) -> None:
    client = make_app(max_pending_jobs=2).test_client()
    assert submit(client, image_bytes()).status_code == 202
    assert submit(client, image_bytes()).status_code == 202
    response = submit(client, image_bytes())
    assert response.status_code == 429
    assert response.json["error"]["code"] == "queue_full"
    assert int(response.headers["Retry-After"]) > 0
    assert len(queued_job_ids(redis_client)) == 2


def test_rate_limit_per_key_is_429_with_retry_after(
    make_app, redis_client: redis.Redis
) -> None:
    app = make_app(rate_limit="2/minute")
    client = app.test_client()
    job = "/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA"
    assert client.get(job, headers=AUTH).status_code == 404
    assert client.get(job, headers=AUTH).status_code == 404
    response = client.get(job, headers=AUTH)
    assert response.status_code == 429
    assert response.json["error"]["code"] == "rate_limited"
    assert 0 < int(response.headers["Retry-After"]) <= 60  # the rest of the minute window
    # Another valid key (another tenant) has its own budget: the first key's 429 must not
    # spill over, and the second key runs out on its own count.
    other_key, _ = add_key(Path(services_of(app).settings.api_keys_file), "acme")
    other = {"Authorization": f"Bearer {other_key}"}
    assert client.get(job, headers=other).status_code == 404
    assert client.get(job, headers=other).status_code == 404
    assert client.get(job, headers=other).status_code == 429
    assert client.get(job, headers=AUTH).status_code == 429
    assert DEV_KEY not in str(redis_client.keys("*"))
    assert other_key not in str(redis_client.keys("*"))


def test_the_service_serves_real_traffic_again_once_an_outage_ends(
    make_app, redis_client: redis.Redis
) -> None:
    """An outage must leave nothing broken behind it (a poisoned client, a stuck limiter):
    the same process, with its dependencies back, accepts an image, shows the job and
    reports its dependencies up on /readyz (/healthz touches nothing, so it proves nothing)."""
    assert submit(make_app(s3_endpoint_url=closed_port_url()).test_client(),
                  image_bytes()).status_code == 503
    dead = closed_port_url("redis") + "/10"
    assert submit(make_app(redis_url=dead, broker_url=dead).test_client(),
                  image_bytes()).status_code == 503
    client = make_app().test_client()
    accepted = submit(client, image_bytes())
    assert accepted.status_code == 202
    assert queued_job_ids(redis_client) == [accepted.json["id"]]
    shown = client.get(f"/v1/jobs/{accepted.json['id']}", headers=AUTH)
    assert shown.status_code == 200 and shown.json["status"] == "queued"
    components = client.get("/readyz").json["components"]
    assert {name: components[name]["status"] for name in ("redis", "s3", "broker")} == {
        "redis": "up", "s3": "up", "broker": "up"}  # Triton does not run in these tests


def test_a_retry_after_a_broker_outage_gets_a_fresh_job(
    app: Flask, make_app, redis_client: redis.Redis
) -> None:
    """The failed attempt released its Idempotency-Key, so the retry is not stuck on the
    failed job: it is accepted and enqueued."""
    data = image_bytes()
    key = {"Idempotency-Key": "retry-me"}
    broken = make_app(broker_url=closed_port_url("redis") + "/10").test_client()
    assert submit(broken, data, headers=key).status_code == 503
    retry = submit(app.test_client(), data, headers=key)
    assert retry.status_code == 202 and "Idempotent-Replayed" not in retry.headers
    assert queued_job_ids(redis_client) == [retry.json["id"]]
