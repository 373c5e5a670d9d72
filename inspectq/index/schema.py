"""The results index's tables, as SQLAlchemy Core ``Table`` objects the queries are built from.

The tables themselves are created only by the Alembic migrations in ``migrations/versions``
(:meth:`inspectq.index.ResultsIndex.migrate`); this module must describe the same tables
(``tests/index`` compares the two). On PostgreSQL ``jobs`` is RANGE-partitioned by
``created_at`` (one partition per UTC day, see :mod:`inspectq.index.partitions`, plus a
DEFAULT partition); on SQLite it is one plain table with the same columns and indexes.

``jobs`` (one row per finished job, ``done`` or ``failed``)::

    created_at, id        primary key (the partition key must be part of it); created_at of
                          a job never changes, so upserts conflict on the pair
    tenant                every query filters on it
    line, camera, batch_id
    status                done | failed
    decision              PASS | REVIEW | REJECT; null when failed
    score                 image defect score; null when failed
    error_code            why a failed job failed; null when done
    defect_classes        JSON list of the distinct classes found, sorted
    defect_count          number of defect regions
    defects               JSON {class: regions of that class}
    regions               JSON list of the first MAX_REGIONS regions, most confident first:
                          {"class", "score", "bbox", "area_px"} (for exports)
    model_name, model_version, model_sha256      null when failed
    pass_threshold, reject_threshold             the thresholds the decision was made with
    finished_at           when the outcome was recorded (the record's updated_at)
    image_width, image_height, image_sha256
    quality_issues        JSON list of image-quality issues (blank, saturated, ...)
    metadata              the client's metadata (JSONB on PostgreSQL)
    feedback              null | confirm | correct: the latest operator feedback's verdict
    feedback_decision     the operator's decision in that feedback (when given)
    feedback_at, feedback_by

``feedback`` (history: every operator feedback entry, the latest of which is the job's state)::

    id (serial), job_id, tenant, job_created_at, at, verdict, decision, defects (JSON), note, by
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from inspectq.instant import as_utc

#: How many regions a job row keeps for exports (the most confident first); defect_count and
#: defects always count them all.
MAX_REGIONS = 100


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime in and out, on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time type: SQLAlchemy stores text
    (``YYYY-MM-DD HH:MM:SS.ffffff``) that sorts as time only when every value is in the same
    zone, so values are converted to UTC and stored without an offset. A naive datetime is
    taken as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # an expression SQLite returned as text
            value = datetime.fromisoformat(value)
        return as_utc(value)


#: JSON everywhere, JSONB on PostgreSQL (smaller to read, indexable if ever needed).
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("id", sa.Text(), nullable=False),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("line", sa.Text(), nullable=False),
    sa.Column("camera", sa.Text(), nullable=True),
    sa.Column("batch_id", sa.Text(), nullable=True),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("decision", sa.Text(), nullable=True),
    sa.Column("score", sa.Double(), nullable=True),
    sa.Column("error_code", sa.Text(), nullable=True),
    sa.Column("defect_classes", JSONType, nullable=False),
    sa.Column("defect_count", sa.Integer(), nullable=False),
    sa.Column("defects", JSONType, nullable=False),
    sa.Column("regions", JSONType, nullable=False),
    sa.Column("model_name", sa.Text(), nullable=True),
    sa.Column("model_version", sa.Text(), nullable=True),
    sa.Column("model_sha256", sa.Text(), nullable=True),
    sa.Column("pass_threshold", sa.Double(), nullable=False),
    sa.Column("reject_threshold", sa.Double(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=False),
    sa.Column("image_width", sa.Integer(), nullable=True),
    sa.Column("image_height", sa.Integer(), nullable=True),
    sa.Column("image_sha256", sa.Text(), nullable=False),
    sa.Column("quality_issues", JSONType, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("feedback", sa.Text(), nullable=True),
    sa.Column("feedback_decision", sa.Text(), nullable=True),
    sa.Column("feedback_at", UTCDateTime(), nullable=True),
    sa.Column("feedback_by", sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint("created_at", "id", name="jobs_pkey"),
    postgresql_partition_by="RANGE (created_at)",
)

# The listings (newest first, per tenant, optionally per line; the other filters are applied
# on the rows these ranges yield), `indexed` (by id), `batch` (by tenant and batch). The
# per-line index also carries camera, status and decision (PostgreSQL INCLUDE), so the line
# statistics are index-only scans. Every index costs index write throughput: add one only for
# a query that needs it.
sa.Index("jobs_tenant_created", jobs.c.tenant, jobs.c.created_at.desc(), jobs.c.id.desc())
sa.Index("jobs_tenant_line_created", jobs.c.tenant, jobs.c.line, jobs.c.created_at.desc(),
         jobs.c.id.desc(), postgresql_include=["camera", "status", "decision"])
sa.Index("jobs_id", jobs.c.id)
sa.Index("jobs_tenant_batch", jobs.c.tenant, jobs.c.batch_id,
         postgresql_where=jobs.c.batch_id.isnot(None), sqlite_where=jobs.c.batch_id.isnot(None))

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("job_id", sa.Text(), nullable=False),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("job_created_at", UTCDateTime(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("verdict", sa.Text(), nullable=False),
    sa.Column("decision", sa.Text(), nullable=True),
    sa.Column("defects", JSONType, nullable=True),
    sa.Column("note", sa.Text(), nullable=True),
    sa.Column("by", sa.Text(), nullable=True),
)

sa.Index("feedback_tenant_job", feedback.c.tenant, feedback.c.job_id, feedback.c.at)
sa.Index("feedback_job_created", feedback.c.job_created_at)
