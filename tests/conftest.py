"""Fixtures shared by the whole suite: a real SeaweedFS S3 server for the test session, and
a flushed Redis database for each test of a folder whose ``settings`` fixture names one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devstack import seaweed
from devstack.ports import free_port, port_open, wait_until
from inspectq.config import Settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-torch", action="store_true",
                     help="fail, instead of skipping, when the model tests cannot import torch")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings()`` in a subprocess equal ``settings``."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"INSPECTQ_{name.upper()}"] = str(value)
    return env


TEST_ACCESS_KEY = "inspectq-test"
TEST_SECRET_KEY = "inspectq-test-secret"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``weed mini`` S3 server on free ports, checking signatures, for this session.

    Use ``settings_for_s3(s3_endpoint)`` (credentials TEST_ACCESS_KEY/TEST_SECRET_KEY).
    """
    data_dir: Path = tmp_path_factory.mktemp("seaweed")
    run = seaweed.plan(data_dir, TEST_ACCESS_KEY, TEST_SECRET_KEY, s3_port=free_port())
    log = (data_dir / "weed.log").open("wb")
    proc = subprocess.Popen(run.argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open(run.s3_port) or proc.poll() is not None, 60, "SeaweedFS")
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited early; see {data_dir / 'weed.log'}")
        yield run.endpoint_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    """The Redis database of ``settings.redis_url``, empty before and after the test."""
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    yield client
    client.flushdb()
