"""/healthz, /readyz (per component, 503 when one is down) and /metrics."""

from __future__ import annotations

import redis
from flask.testing import FlaskClient

from tests.api.conftest import AUTH, closed_port_url, image_bytes, submit


def test_healthz_touches_nothing(make_app) -> None:
    dead = closed_port_url("redis")
    client = make_app(redis_url=dead, s3_endpoint_url=closed_port_url()).test_client()
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_names_the_component_that_is_down(client: FlaskClient) -> None:
    """Redis, S3 and the broker are real here; Triton is a closed port."""
    response = client.get("/readyz")
    assert response.status_code == 503
    components = response.json["components"]
    assert components["redis"] == {"status": "up"}
    assert components["s3"] == {"status": "up"}
    assert components["broker"] == {"status": "up"}
    assert components["triton"]["status"] == "down"
    assert response.json["status"] == "not_ready"


def test_readyz_with_redis_and_s3_down(make_app) -> None:
    dead = closed_port_url("redis")
    client = make_app(redis_url=dead, s3_endpoint_url=closed_port_url()).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    components = response.json["components"]
    assert {name: c["status"] for name, c in components.items()} == {
        "redis": "down", "s3": "down", "broker": "down", "triton": "down",
    }
    assert "127.0.0.1" not in response.get_data(as_text=True)


def test_metrics_count_requests_jobs_and_rejections(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    assert submit(client, image_bytes()).status_code == 202
    assert submit(client, b"not an image").status_code == 415
    client.get("/v1/jobs/nope", headers=AUTH)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'inspectq_api_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text
    assert 'inspectq_api_requests_total{method="POST",route="/v1/jobs",status="415"} 1.0' in text
    assert "inspectq_api_jobs_accepted_total 1.0" in text
    assert 'inspectq_api_rejections_total{reason="not_an_image",status="415"} 1.0' in text
    assert 'inspectq_api_rejections_total{reason="job_not_found",status="404"} 1.0' in text
    assert 'inspectq_api_request_seconds_count{method="POST",route="/v1/jobs"} 2.0' in text
    assert "inspectq_api_ingest_seconds_count 1.0" in text


def test_metrics_export_the_quarantine_count_of_all_processes(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    response = client.get("/metrics")
    assert response.headers["Content-Type"].count("charset") == 1
    assert "inspectq_quarantined_records_total 0.0" in response.get_data(as_text=True)
    redis_client.incr("inspectq:quarantined", 3)  # as workers or the reconciler would
    assert "inspectq_quarantined_records_total 3.0" in client.get("/metrics").get_data(
        as_text=True)
