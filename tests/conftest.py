"""Fixtures shared by the whole suite: a real SeaweedFS S3 server for the test session, and
a flushed Redis database for each test of a folder whose ``settings`` fixture names one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL

from devstack import seaweed, stack
from devstack.ports import free_port, port_open, wait_until
from inspectq.config import Settings
from inspectq.index import ResultsIndex


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-torch", action="store_true",
                     help="fail, instead of skipping, when the model tests cannot import torch")


#: Test files that share nothing with the rest of their folder, so they may run in a process
#: of their own: the chaos run makes its own stack (Redis DB 13, its own S3 bucket and index).
OWN_PROCESS = {"tests/e2e/test_chaos.py"}
#: The groups that take longest (minutes each), started before the others.
LONGEST_FIRST = ("tests/e2e/test_chaos.py", "e2e", "workers", "api")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (service env only)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``pytest -n N`` (``make test``) every folder's tests run in one worker process,
    one after another, because a folder's tests share its Redis database and its PostgreSQL
    database; the folders run side by side."""
    from xdist.scheduler import LoadScopeScheduling

    class FolderScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            if path in OWN_PROCESS:
                return path
            parts = path.split("/")  # tests/<folder>/test_x.py
            return parts[1] if len(parts) > 2 else "top"

        def _assign_work_unit(self, node: Any) -> None:
            # the longest groups start first, so none of them is left to run alone at the end
            for scope in reversed(LONGEST_FIRST):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return FolderScheduling(config, log)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings()`` in a subprocess equal ``settings``."""
    return {**os.environ, **stack.settings_env(settings)}


#: The test PostgreSQL (libpq conninfo): the machine's own server by default.
PG_CONNINFO = os.environ.get("INSPECTQ_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres")


def fresh_postgres(name: str) -> str:
    """(Re)create database ``name`` on the test PostgreSQL, migrate the results index into
    it, and return its SQLAlchemy URL."""
    with psycopg.connect(PG_CONNINFO, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = conninfo_to_dict(PG_CONNINFO)
    url = URL.create("postgresql+psycopg", username=info.get("user"),
                     password=info.get("password"), host=info.get("host"),
                     port=int(info.get("port") or 5432), database=name
                     ).render_as_string(hide_password=False)
    index = ResultsIndex(url)
    index.migrate()
    index.close()
    return url


def empty_index(url: str) -> None:
    """Remove every indexed job and feedback entry (tables stay)."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, feedback")


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
