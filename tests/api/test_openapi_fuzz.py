"""Fuzz every documented operation with schemathesis, generated from /openapi.json, against
the real app (WSGI) on the real Redis and S3: whatever it sends, no 5xx, and every answer is
one the document describes (status code, content type, headers, body schema)."""

from __future__ import annotations

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import AUTH


@pytest.fixture
def fuzz_app(make_app) -> Flask:
    # Triton is a closed port, so /readyz answers 503 by design: leave it out of the fuzzing
    # (its own tests cover it). A small body limit keeps the generated uploads fast.
    return make_app(max_upload_bytes=64 * 1024)


def test_no_server_errors(fuzz_app: Flask, redis_client: object) -> None:
    """Each operation gets its own bounded hypothesis run (schemathesis' pytest plugin does
    not run on this pytest, so the loop is written out)."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path != "/readyz"]
    assert len(operations) == 23  # 21 /v1 operations, /healthz, /metrics
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_5xx(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH, checks=[
                not_a_server_error, status_code_conformance, content_type_conformance,
                response_headers_conformance, response_schema_conformance])

        no_5xx()


def test_the_document_describes_the_api(fuzz_app: Flask) -> None:
    document = fuzz_app.test_client().get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"/v1/jobs", "/v1/batches", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/mask",
            "/v1/jobs/{job_id}/overlay", "/v1/jobs/{job_id}/heatmap", "/v1/jobs/{job_id}/image",
            "/v1/lines/{line}/health", "/v1/model"} <= set(paths)
    for which in ("image", "mask", "overlay", "heatmap"):
        assert "image/png" in paths[f"/v1/jobs/{{job_id}}/{which}"]["get"]["responses"]["200"][
            "content"]
    upload = paths["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
