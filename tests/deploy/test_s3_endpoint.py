"""Deployments on AWS S3 set ``INSPECTQ_S3_ENDPOINT_URL=`` (empty): the store must then use
AWS's own regional endpoint, not the local default and not an invalid empty URL."""

from __future__ import annotations

import pytest

from inspectq.config import Settings
from inspectq.storage import ObjectStore


def test_empty_endpoint_selects_aws_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTQ_S3_ENDPOINT_URL", "")
    monkeypatch.setenv("INSPECTQ_S3_REGION", "eu-west-1")
    settings = Settings()
    assert settings.s3_endpoint_url is None
    client = ObjectStore(settings)._s3  # building the client makes no network call
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


def test_explicit_endpoint_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTQ_S3_ENDPOINT_URL", "http://minio.storage:9000")
    assert Settings().s3_endpoint_url == "http://minio.storage:9000"
