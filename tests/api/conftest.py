"""Fixtures for the API tests: the real app against the local Redis (DB 10), a real
SeaweedFS S3 server (``s3_endpoint`` from tests/conftest.py) and the real PostgreSQL
(results index, database ``inspectq_api_test``). No worker runs: tests finish jobs with
``JobStore.finish`` and write mask/overlay PNGs as a worker would."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from api.app import create_app
from api.services import Services
from devstack.ports import free_port
from inspectq.config import Settings
from inspectq.storage import ObjectStore
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, fresh_postgres

REDIS_URL = "redis://127.0.0.1:6379/10"
BUCKET = "api-tests"
DEV_KEY = "inspectq-dev-key"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}


def closed_port_url(scheme: str = "http") -> str:
    """A URL on 127.0.0.1 where nothing listens (found free just now)."""
    return f"{scheme}://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def bucket_ready(s3_endpoint: str) -> str:
    settings = Settings(
        s3_endpoint_url=s3_endpoint,
        s3_bucket=BUCKET,
        s3_access_key_id=TEST_ACCESS_KEY,
        s3_secret_access_key=TEST_SECRET_KEY,
    )
    ObjectStore(settings).ensure_bucket()
    return s3_endpoint


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def database_url() -> str:
    """The results index of the API tests: a fresh PostgreSQL database for the session."""
    return fresh_postgres("inspectq_api_test")


@pytest.fixture
def settings(bucket_ready: str, tmp_path: Path, redis_client: redis.Redis,
             database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        s3_endpoint_url=bucket_ready,
        s3_bucket=BUCKET,
        s3_access_key_id=TEST_ACCESS_KEY,
        s3_secret_access_key=TEST_SECRET_KEY,
        s3_max_attempts=1,
        triton_url=f"127.0.0.1:{free_port()}",  # no Triton in these tests
        api_keys_file=str(tmp_path / "keys.json"),
        rate_limit="10000/minute",
        max_wait_s=5,
    )


@pytest.fixture
def make_app(settings: Settings) -> Callable[..., Flask]:
    """Build an app on the test settings with some fields changed (and validated)."""

    def build(**changes: Any) -> Flask:
        return create_app(Settings(**{**settings.model_dump(), **changes}))

    return build


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def services_of(app: Flask) -> Services:
    return app.extensions["inspectq"]


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=7 if mode in ("L", "I;16") else None).save(buffer, fmt)
    return buffer.getvalue()


def submit(client: FlaskClient, data: bytes, headers: dict[str, str] | None = None,
           **fields: str) -> Any:
    """POST one image as multipart with optional form fields."""
    form: dict[str, Any] = {"image": (io.BytesIO(data), "part.png"), **fields}
    return client.post("/v1/jobs", data=form, headers={**AUTH, **(headers or {})},
                       content_type="multipart/form-data")


def queued_job_ids(redis_client: redis.Redis) -> list[str]:
    """Job ids in the Celery queue in delivery order, read from the broker's own messages
    (kombu pushes on the left and workers pop from the right)."""
    import base64
    import json

    ids = []
    for raw in reversed(redis_client.lrange("inspectq", 0, -1)):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        ids.append(body[0][0])
    return ids
