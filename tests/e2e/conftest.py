"""A whole, isolated inspectq stack for the end-to-end tests: SeaweedFS, the real CPU
``tritonserver`` with the shipped model, a Celery worker and the API under gunicorn, on free
ports, with the machine's Redis (DB 12). Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from devstack.client import InspectqClient
from devstack.stack import StackConfig, down, isolated_config, up

REDIS_DB = 12


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    config = isolated_config(tmp_path_factory.mktemp("stack"), REDIS_DB, s3_bucket="e2e")
    redis.Redis.from_url(config.settings.redis_url).flushdb()
    try:
        up(config)
        yield config
    finally:
        down(config)


@pytest.fixture(scope="session")
def client(stack: StackConfig) -> InspectqClient:
    return InspectqClient(stack.api_url, stack.settings.api_key.get_secret_value())
