"""CORS for browser clients: off by default, only the configured origins, preflight without
an API key (browsers never send one on OPTIONS)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from tests.api.conftest import AUTH

PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,idempotency-key"}


def test_no_cors_headers_by_default(client) -> None:
    response = client.options("/v1/jobs", headers={"Origin": "https://dash.example",
                                                    **PREFLIGHT})
    assert response.status_code == 200  # a preflight is not refused as unauthenticated
    assert "Access-Control-Allow-Origin" not in response.headers


def test_configured_origin_may_call_the_api(make_app: Callable[..., Flask]) -> None:
    client = make_app(cors_origins=["https://dash.example"]).test_client()
    allowed = client.options("/v1/jobs", headers={"Origin": "https://dash.example",
                                                  **PREFLIGHT})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    other = client.options("/v1/jobs", headers={"Origin": "https://evil.example",
                                                **PREFLIGHT})
    assert "Access-Control-Allow-Origin" not in other.headers
    read = client.get("/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA",
                      headers={**AUTH, "Origin": "https://dash.example"})
    assert read.status_code == 404
    assert read.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    # The key is still required for everything but the preflight.
    assert client.get("/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA",
                      headers={"Origin": "https://dash.example"}).status_code == 401
