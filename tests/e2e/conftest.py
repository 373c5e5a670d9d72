"""A whole, isolated inspectq stack for the end-to-end tests: SeaweedFS, the real CPU
``tritonserver`` with the shipped model, a Celery worker and the API under gunicorn, on free
ports, with the machine's Redis (DB 12). Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from devstack.client import InspectqClient
from devstack.ports import free_port
from devstack.stack import StackConfig, down, up
from inspectq.config import Settings

REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings(
        redis_url=REDIS_URL,
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_bucket="inspectq-e2e",
        triton_url=f"127.0.0.1:{free_port()}",
    )
    config = StackConfig(
        settings=settings,
        var_dir=tmp_path_factory.mktemp("stack"),
        api_port=free_port(),
        triton_http_port=free_port(),
        triton_metrics_port=free_port(),
        worker_concurrency=2,
        api_workers=1,
    )
    try:
        up(config)
        yield config
    finally:
        down(config)


@pytest.fixture(scope="session")
def client(stack: StackConfig) -> InspectqClient:
    return InspectqClient(stack.api_url, stack.settings.api_key.get_secret_value())
