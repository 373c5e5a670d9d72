"""Fixtures for the results index tests: a real PostgreSQL database made for the session
(``inspectq_index_test``, dropped at the end) and a fresh SQLite file per test, and real job
records (JobRecord, InspectionResult, ...) to index.

PostgreSQL is reached as ``INSPECTQ_TEST_POSTGRES`` (a libpq conninfo, default the local
server: ``host=127.0.0.1 port=5432 user=postgres``). When it cannot be reached the
PostgreSQL half of the tests is skipped, with the reason, unless
``INSPECTQ_REQUIRE_POSTGRES=1`` makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from inspectq.index import ResultsIndex
from inspectq.jobs import ImageRef, JobError, JobRecord, Status, new_job_id
from inspectq.result import (
    Decision,
    ImageQuality,
    InspectionResult,
    ModelInfo,
    QualityIssue,
    Region,
    Thresholds,
    Timings,
)

PG_CONNINFO = os.environ.get("INSPECTQ_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres")
PG_DATABASE = "inspectq_index_test"
THRESHOLDS = Thresholds(pass_threshold=0.40, reject_threshold=0.65)
CLASSES = ("background", "scratch", "pit", "crack", "stain")
SCORES = {Decision.PASS: 0.12, Decision.REVIEW: 0.5, Decision.REJECT: 0.91}


def stamp(moment: datetime) -> str:
    """A JobRecord timestamp: ISO 8601, milliseconds, Z (as inspectq.jobs.utc_now)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_record(
    *,
    tenant: str,
    created_at: datetime,
    line: str = "line-1",
    camera: str | None = "cam-1",
    decision: Decision | None = Decision.PASS,
    classes: Sequence[str] = (),
    batch_id: str | None = None,
    quality: Sequence[QualityIssue] = (),
    status: Status | None = None,
    job_id: str | None = None,
) -> JobRecord:
    """A job record as the workers leave it: ``done`` with a result when ``decision`` is
    given, ``failed`` with an error when it is None (or any ``status`` given)."""
    if status is None:
        status = Status.DONE if decision is not None else Status.FAILED
    result = None
    if status is Status.DONE and decision is not None:
        result = InspectionResult(
            decision=decision,
            score=SCORES[decision],
            defects=[Region(class_name=name, score=0.8 - i / 100, bbox=(i, i, i + 8, i + 8),
                            area_px=40 + i, area_ratio=(40 + i) / 4096)
                     for i, name in enumerate(classes)],
            width=64,
            height=64,
            model=ModelInfo(name="inspectq_seg", version="3", sha256="ab" * 32, classes=CLASSES),
            thresholds=THRESHOLDS,
            quality=ImageQuality(issues=list(quality), detail="; ".join(quality)),
            timings=Timings(total_ms=12.5),
            cache_hit=False,
        )
    return JobRecord(
        id=job_id or new_job_id(),
        tenant=tenant,
        status=status,
        created_at=stamp(created_at),
        updated_at=stamp(created_at + timedelta(seconds=2)),
        enqueued_at=created_at.timestamp(),
        line=line,
        camera=camera,
        batch_id=batch_id,
        metadata={"part": "A-17", "shift": 2},
        thresholds=THRESHOLDS,
        image=ImageRef(key="jobs/x/image", sha256="cd" * 32, bytes=1234,
                       content_type="image/png", width=64, height=64),
        result=result,
        error=JobError(code="image_undecodable", message="not an image")
        if status is Status.FAILED else None,
    )


def _admin() -> psycopg.Connection:
    return psycopg.connect(PG_CONNINFO, dbname="postgres", autocommit=True, connect_timeout=3)


def postgres_url(database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the test server."""
    info = psycopg.conninfo.conninfo_to_dict(PG_CONNINFO)
    url = sa.URL.create(
        "postgresql+psycopg", username=info.get("user"), password=info.get("password"),
        host=info.get("host"), port=int(info["port"]) if info.get("port") else None,
        database=database)
    return url.render_as_string(hide_password=False)


def create_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database for the session, dropped at the end."""
    try:
        create_database(PG_DATABASE)
    except psycopg.OperationalError as error:
        if os.environ.get("INSPECTQ_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL unreachable ({PG_CONNINFO}): {error}")
    yield postgres_url(PG_DATABASE)
    drop_database(PG_DATABASE)


@pytest.fixture(scope="session")
def pg_index(pg_url: str) -> Iterator[ResultsIndex]:
    index = ResultsIndex(pg_url)
    index.migrate()
    index.maintain()
    yield index
    index.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultsIndex]:
    """An empty, migrated index on each backend."""
    if request.param == "sqlite":
        built = ResultsIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}")
        built.migrate()
        yield built
        built.close()
    else:
        built = request.getfixturevalue("pg_index")
        with built._engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE jobs, feedback"))
        yield built


@pytest.fixture
def now() -> datetime:
    """A fixed 'now' inside the partitions pg_index made (today, UTC), whole milliseconds."""
    moment = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return moment
