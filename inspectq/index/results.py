"""The results index: every finished job in SQL, for listings, exports, line statistics,
batches and operator feedback. S3 stays the durable record; the index is rebuilt from it by
upserting the records again (idempotent), so it may lag or be rebuilt, never disagree.

Backends: PostgreSQL in production (``postgresql+psycopg://...``; ``jobs`` partitioned by
day, see :mod:`inspectq.index.partitions`) and SQLite for zero-setup local use (one file,
no partitions). Both run the same queries, built with SQLAlchemy Core from bound parameters.

Every method that reads or writes jobs takes the tenant and filters on it; only the
retention helpers (:meth:`ResultsIndex.expired`, :meth:`ResultsIndex.drop_before`) and
:meth:`ResultsIndex.indexed` work across tenants, by job id or time.

Every method raises :class:`IndexUnavailable` when the database cannot be reached (a read
or an upsert is tried once more first when the pool handed out a dead connection).

A :class:`ResultsIndex` holds a connection pool: build it in the process that uses it (after
any fork) and share it between that process's threads.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc
from sqlalchemy.dialects import sqlite

from inspectq.config import Settings
from inspectq.index import partitions
from inspectq.index.schema import MAX_REGIONS, UTCDateTime, feedback, jobs
from inspectq.instant import as_utc
from inspectq.jobs import JobRecord, Status
from inspectq.result import Decision

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Most jobs one list_jobs page may hold.
MAX_PAGE = 1000
#: Most buckets one line_stats call may make (a month of minutes is 43,200).
MAX_BUCKETS = 50_000
#: How far back a listing looks first, then next, before it reads all of the history
#: (see ResultsIndex._newest).
_WINDOWS = (timedelta(days=1), timedelta(days=7), timedelta(days=35))
_BUCKET_MINUTES = {"minute": 1, "hour": 60, "day": 1440}
_SQLITE_BUCKET = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00",
                  "day": "%Y-%m-%d 00:00:00"}
_DECISIONS = tuple(d.value for d in Decision)


class IndexUnavailable(Exception):
    """The index's database cannot be reached (refused, timed out, dropped, locked)."""


class JobFilter(BaseModel):
    """Which jobs a listing or export covers (all fields optional; all given must match).

    ``since`` (inclusive) and ``until`` (exclusive) bound ``created_at``; a naive datetime is
    taken as UTC. ``feedback``: ``none`` (no feedback yet), ``any``, or the latest verdict.
    """

    model_config = ConfigDict(extra="forbid")

    line: str | None = None
    camera: str | None = None
    decision: Decision | None = None
    status: Status | None = None
    since: datetime | None = None
    until: datetime | None = None
    feedback: Literal["none", "any", "confirm", "correct"] | None = None
    batch_id: str | None = None


class FeedbackEntry(BaseModel):
    """One operator feedback entry (:meth:`ResultsIndex.record_feedback` takes it as a dict).

    ``confirm``: the decision was right. ``correct``: it was wrong; ``decision`` is the
    operator's (and ``defects`` their corrected regions, if they drew any). ``at`` defaults
    to now; the entry with the latest ``at`` is the job's feedback state.
    """

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["confirm", "correct"]
    decision: Decision | None = None
    defects: list[dict[str, Any]] | None = None
    note: str | None = None
    by: str | None = None
    at: datetime | None = None


@dataclass
class Page:
    """One page of a listing: job summaries (see :meth:`ResultsIndex.list_jobs`) and the
    cursor of the next page (None on the last page)."""

    jobs: list[dict]
    next_cursor: str | None


def migrations_config(url: str | None = None) -> Config:
    """The Alembic configuration of the index, built in code (no alembic.ini). ``url`` is
    needed only to run Alembic commands without a connection (e.g. a developer's
    ``alembic.command.revision(migrations_config(url), "message", autogenerate=True)``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# --- Row shapes --------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, milliseconds unless the value has finer digits."""
    if moment is None:
        return None
    moment = as_utc(moment)
    spec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def _parse_stamp(value: str) -> datetime:
    return as_utc(datetime.fromisoformat(value))


def job_row(record: JobRecord) -> dict[str, Any]:
    """The ``jobs`` row of a finished job's record."""
    result = record.result
    row: dict[str, Any] = {
        "created_at": _parse_stamp(record.created_at),
        "id": record.id,
        "tenant": record.tenant,
        "line": record.line,
        "camera": record.camera,
        "batch_id": record.batch_id,
        "status": record.status.value,
        "error_code": record.error.code if record.error is not None else None,
        "finished_at": _parse_stamp(record.updated_at),
        "image_sha256": record.image.sha256,
        "metadata": record.metadata,
    }
    if result is None:
        row.update(
            decision=None, score=None, defect_classes=[], defect_count=0, defects={},
            regions=[], model_name=None, model_version=None, model_sha256=None,
            pass_threshold=record.thresholds.pass_threshold,
            reject_threshold=record.thresholds.reject_threshold,
            image_width=record.image.width, image_height=record.image.height,
            quality_issues=[],
        )
        return row
    counts = Counter(region.class_name for region in result.defects)
    row.update(
        decision=result.decision.value,
        score=result.score,
        defect_classes=sorted(counts),
        defect_count=len(result.defects),
        defects=dict(sorted(counts.items())),
        regions=[{"class": r.class_name, "score": round(r.score, 4), "bbox": list(r.bbox),
                  "area_px": r.area_px} for r in result.defects[:MAX_REGIONS]],
        model_name=result.model.name,
        model_version=result.model.version,
        model_sha256=result.model.sha256,
        pass_threshold=result.thresholds.pass_threshold,
        reject_threshold=result.thresholds.reject_threshold,
        image_width=result.width,
        image_height=result.height,
        quality_issues=[issue.value for issue in result.quality.issues],
    )
    return row


#: What a summary (list_jobs, batch) reads: everything but regions, metadata and the image.
_SUMMARY_COLUMNS = [jobs.c[name] for name in (
    "created_at", "id", "line", "camera", "batch_id", "status", "finished_at", "decision",
    "score", "defects", "defect_count", "error_code", "model_version", "pass_threshold",
    "reject_threshold", "feedback", "feedback_decision", "feedback_at", "feedback_by")]


def summary(row: Any) -> dict[str, Any]:
    """A job's JSON-ready summary (the documented shape of :meth:`ResultsIndex.list_jobs`)."""
    return {
        "id": row.id,
        "line": row.line,
        "camera": row.camera,
        "batch_id": row.batch_id,
        "status": row.status,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
        "decision": row.decision,
        "score": row.score,
        "defects": row.defects,
        "defect_count": row.defect_count,
        "error_code": row.error_code,
        "model_version": row.model_version,
        "thresholds": {"pass": row.pass_threshold, "reject": row.reject_threshold},
        "feedback": None if row.feedback is None else {
            "verdict": row.feedback,
            "decision": row.feedback_decision,
            "at": iso(row.feedback_at),
            "by": row.feedback_by,
        },
    }


#: The export's columns, in order, each with what it holds. Every value is flat (a string,
#: number or None) so a row goes straight to csv.writer or a JSON line.
EXPORT_COLUMN_DOCS: dict[str, str] = {
    "id": "The job's id.",
    "created_at": "When the job was accepted (ISO 8601, UTC, Z).",
    "finished_at": "When its outcome was recorded (ISO 8601, UTC, Z).",
    "line": "Production line.",
    "camera": "Camera, or empty.",
    "batch_id": "The batch the job came in with, or empty.",
    "status": "done or failed.",
    "decision": "PASS, REVIEW or REJECT; empty when failed.",
    "score": "Image defect score in [0, 1]; empty when failed.",
    "error_code": "Why a failed job failed; empty when done.",
    "defect_count": "Number of defect regions.",
    "defect_classes": "The distinct defect classes found, sorted, joined by ';'.",
    "defects": 'Regions per class as JSON, e.g. {"scratch": 2}.',
    "regions": f"The first {MAX_REGIONS} regions, most confident first, as JSON: "
               '[{"class", "score", "bbox": [x0, y0, x1, y1], "area_px"}].',
    "model_name": "Model (Triton name) that answered; empty when failed.",
    "model_version": "Its version.",
    "model_sha256": "Its file's sha256.",
    "pass_threshold": "Scores below this PASS.",
    "reject_threshold": "Scores above this REJECT.",
    "image_width": "Image width in pixels (upright).",
    "image_height": "Image height in pixels (upright).",
    "image_sha256": "sha256 of the uploaded bytes.",
    "quality_issues": "Image-quality issues found (blank, saturated, low_contrast, "
                      "out_of_focus), joined by ';'.",
    "feedback": "The latest operator verdict: confirm or correct; empty when none.",
    "feedback_decision": "The operator's decision in that feedback, when given.",
    "feedback_at": "When that feedback was given (ISO 8601, UTC, Z).",
    "feedback_by": "Who gave it.",
    "metadata": "The client's metadata, as JSON.",
}


def _joined(json_list: str) -> str:
    return "" if json_list == "[]" else ";".join(json.loads(json_list))


#: What an export reads, in EXPORT_COLUMNS order, the JSON columns as their text (an export
#: writes JSON out again, so decoding it would be wasted: it was most of the work), and how
#: each value becomes its export value (None: as it is).
_EXPORT_SELECT = [sa.cast(jobs.c[name], sa.Text).label(name)
                  if isinstance(jobs.c[name].type, sa.JSON) else jobs.c[name]
                  for name in EXPORT_COLUMN_DOCS]
_EXPORT_CONVERT: list[Callable[[Any], Any] | None] = [
    iso if isinstance(jobs.c[name].type, UTCDateTime)
    else _joined if name in ("defect_classes", "quality_issues")
    else None
    for name in EXPORT_COLUMN_DOCS]


def export_row(row: Sequence[Any]) -> dict[str, Any]:
    """A job's flat export row, keyed by EXPORT_COLUMNS in order, from a row of
    _EXPORT_SELECT."""
    return {name: value if convert is None or value is None else convert(value)
            for name, convert, value in zip(EXPORT_COLUMN_DOCS, _EXPORT_CONVERT, row,
                                            strict=True)}


# --- Cursors -----------------------------------------------------------------------------


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """The opaque position after (created_at, job_id) in the newest-first order."""
    raw = f"1|{as_utc(created_at).isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor; ValueError when it is not one this module made."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        version, stamp, job_id = raw.decode().split("|", 2)
        created_at = datetime.fromisoformat(stamp)
    except (ValueError, UnicodeError, binascii.Error) as error:
        raise ValueError("malformed cursor") from error
    if version != "1" or not job_id or created_at.tzinfo is None:
        raise ValueError("malformed cursor")
    return as_utc(created_at), job_id


# --- The index ---------------------------------------------------------------------------


def _counts(total: int, passed: int, review: int, reject: int, failed: int,
            minutes: float) -> dict[str, Any]:
    decided = passed + review + reject
    return {
        "total": total, "PASS": passed, "REVIEW": review, "REJECT": reject, "failed": failed,
        "review_rate": round(review / decided, 6) if decided else None,
        "reject_rate": round(reject / decided, 6) if decided else None,
        "images_per_min": round(total / minutes, 6) if minutes > 0 else None,
    }


def _tally() -> list[sa.ColumnElement[Any]]:
    """total, PASS, REVIEW, REJECT, failed: the aggregate columns of a statistics query."""
    c = jobs.c
    return [
        sa.func.count().label("total"),
        *[sa.func.sum(sa.case((c.decision == value, 1), else_=0)).label(value)
          for value in _DECISIONS],
        sa.func.sum(sa.case((c.status == Status.FAILED.value, 1), else_=0)).label("failed"),
    ]


#: Columns an upsert writes (the feedback state is only ever written by record_feedback)
#: and those it overwrites when the job is indexed already (not the key, never the tenant).
_UPSERT_COLUMNS = [c.name for c in jobs.c if not c.name.startswith("feedback")]
_UPSERT_SET = [name for name in _UPSERT_COLUMNS if name not in ("created_at", "id", "tenant")]
#: Rows per PostgreSQL upsert statement (bounds one statement's size, not the batch's).
_PG_CHUNK = 5000


def _pg_record_type(column: sa.Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return "timestamptz"
    if isinstance(kind, sa.JSON):
        return "jsonb"
    if isinstance(kind, sa.Double):
        return "float8"
    if isinstance(kind, sa.Integer):
        return "int4"
    return "text"


def _pg_upsert() -> sa.TextClause:
    """PostgreSQL's upsert of a whole batch in one small statement with one parameter: the
    rows as one JSON array, turned back into typed rows by ``jsonb_to_recordset``. Encoding
    JSON is the cheapest way for the client to ship many rows, and the statement text never
    changes, so it is parsed once per connection whatever the batch size."""
    names = _UPSERT_COLUMNS
    record = ", ".join(f"{name} {_pg_record_type(jobs.c[name])}" for name in names)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in _UPSERT_SET)
    return sa.text(
        f"INSERT INTO jobs ({', '.join(names)}) SELECT {', '.join(names)} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS u({record}) "
        f"ON CONFLICT (created_at, id) DO UPDATE SET {updates} RETURNING id")


_PG_UPSERT = _pg_upsert()


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


class ResultsIndex:
    """The SQL index of finished jobs (see the module docstring)."""

    #: The columns of :meth:`iter_rows`, in order (each documented in EXPORT_COLUMN_DOCS).
    EXPORT_COLUMNS: ClassVar[list[str]] = list(EXPORT_COLUMN_DOCS)

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = sa.make_url(url)
        backend = self.url.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise ValueError(f"the results index runs on PostgreSQL or SQLite, not {backend}")
        self.postgres = backend == "postgresql"
        #: Records per upsert call that callers should send (from_settings sets it).
        self.batch_size = 500
        #: Days a job stays indexed, 0 = forever (from_settings sets it; the caller applies it).
        self.retention_days = 0
        if self.postgres:
            query = self.url.query
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in query:
                connect_args["connect_timeout"] = 5
            if "options" not in query:
                connect_args["options"] = "-c timezone=UTC"
            if "application_name" not in query:
                connect_args["application_name"] = "inspectq-index"
            self._engine = sa.create_engine(
                self.url, echo=echo, connect_args=connect_args, pool_size=5, max_overflow=10,
                pool_timeout=10, pool_recycle=1800)
        else:
            database = self.url.database
            if not database or database == ":memory:" or database.startswith("file:"):
                raise ValueError("the SQLite results index needs a file path")
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            self._engine = sa.create_engine(
                self.url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False},
                pool_timeout=10)
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        # Single statements (reads, upserts) run in autocommit: one round trip, no BEGIN.
        self._auto = self._engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultsIndex:
        index = cls(settings.database_url)
        index.batch_size = settings.index_batch_size
        index.retention_days = settings.retention_days
        return index

    # --- plumbing ---

    @staticmethod
    def _unavailable(error: Exception) -> IndexUnavailable | None:
        if isinstance(error, exc.DBAPIError) and (
                error.connection_invalidated
                or isinstance(error, exc.OperationalError | exc.InterfaceError)):
            return IndexUnavailable(f"results index unreachable: {error.orig or error}")
        if isinstance(error, exc.TimeoutError):  # no pooled connection came free in time
            return IndexUnavailable(f"results index unreachable: {error}")
        return None

    def _run(self, work: Callable[[sa.Connection], T]) -> T:
        """``work`` on an autocommit connection; once more on a fresh connection when the
        pooled one turned out dead (a restarted server)."""
        for attempt in (1, 2):
            try:
                with self._auto.connect() as conn:
                    return work(conn)
            except (exc.DBAPIError, exc.TimeoutError) as error:
                if (attempt == 1 and isinstance(error, exc.DBAPIError)
                        and error.connection_invalidated):
                    continue
                unavailable = self._unavailable(error)
                if unavailable is None:
                    raise
                raise unavailable from error
        raise AssertionError("unreachable")

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except (exc.DBAPIError, exc.TimeoutError) as error:
            unavailable = self._unavailable(error)
            if unavailable is None:
                raise
            raise unavailable from error

    @cached_property
    def _upsert_statement(self) -> Any:
        """SQLite: an INSERT of one jobs row that, when the job is there already, overwrites
        everything but its key, tenant and feedback state; RETURNING its id."""
        statement = sqlite.insert(jobs)
        return statement.on_conflict_do_update(
            index_elements=[jobs.c.created_at, jobs.c.id],
            set_={name: statement.excluded[name] for name in _UPSERT_SET},
        ).returning(jobs.c.id)

    # --- schema ---

    def migrate(self) -> None:
        """Bring the tables to the newest migration (alembic upgrade head). Safe to call from
        several processes at once: PostgreSQL serialises them on an advisory lock, SQLite on
        a lock file beside the database."""
        config = migrations_config()
        with self._migration_lock(), self._transaction() as conn:
            if self.postgres:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": partitions.MIGRATE_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.postgres:
            yield
            return
        with open(f"{self.url.database}.migrate-lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def maintain(self, now: datetime | None = None) -> None:
        """PostgreSQL: make the day partitions from yesterday to a week ahead of ``now``, and
        one for every day that has rows in the DEFAULT partition (moving them in). Run it
        daily (and at deploy, after migrate). A no-op on SQLite."""
        if not self.postgres:
            return
        today = as_utc(now or datetime.now(UTC)).date()
        days = {today + timedelta(days=n)
                for n in range(-partitions.BEHIND_DAYS, partitions.AHEAD_DAYS + 1)}
        with self._transaction() as conn:
            days |= partitions.default_days(conn)
        for day in sorted(days):  # one short transaction per day
            with self._transaction() as conn:
                partitions.lock(conn)
                partitions.ensure(conn, [day])

    def ping(self) -> None:
        """Raise IndexUnavailable unless the database answers."""
        self._run(lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one())

    # --- writes ---

    def upsert(self, records: Sequence[JobRecord]) -> int:
        """Index finished jobs (records not done or failed are skipped). Idempotent: a record
        indexed again overwrites its row with the same values, never the feedback state.
        PostgreSQL: one statement (one round trip) per call, the rows bound as one JSON
        array (up to _PG_CHUNK records a statement); SQLite: multi-row INSERTs through SQLAlchemy's
        insertmanyvalues. Returns the rows written."""
        rows: dict[tuple[datetime, str], dict[str, Any]] = {}
        for record in records:
            if record.status.terminal:
                row = job_row(record)
                rows[(row["created_at"], row["id"])] = row  # the last of duplicates wins
        if not rows:
            return 0
        values = list(rows.values())

        if self.postgres:
            def write(conn: sa.Connection) -> int:
                # One statement whatever the batch: the rows travel as one JSON array.
                written = 0
                for start in range(0, len(values), _PG_CHUNK):
                    rows_json = json.dumps(values[start:start + _PG_CHUNK],
                                           separators=(",", ":"), default=_json_default)
                    written += len(conn.execute(_PG_UPSERT, {"rows": rows_json}).all())
                return written
        else:
            statement = self._upsert_statement  # built once: ~2 ms of CPU to construct

            def write(conn: sa.Connection) -> int:
                # An executemany with RETURNING, which SQLAlchemy's "insertmanyvalues" sends
                # as multi-row INSERT ... VALUES ... ON CONFLICT statements.
                return len(conn.execute(statement, values).all())

        return self._run(write)

    def record_feedback(self, tenant: str, job_id: str, created_at: datetime,
                        entry: dict) -> None:
        """Append an operator's feedback (a FeedbackEntry as a dict) to the job's history and
        make it the job's feedback state unless a later entry (by ``at``) is already there.
        KeyError when the job is not indexed for this tenant (index its record first);
        ValueError (pydantic's ValidationError) for a malformed entry."""
        item = FeedbackEntry.model_validate(entry)
        at = as_utc(item.at) if item.at is not None else datetime.now(UTC)
        created_at = as_utc(created_at)
        c = jobs.c
        this_job = sa.and_(c.tenant == tenant, c.id == job_id, c.created_at == created_at)
        decision = item.decision.value if item.decision is not None else None
        with self._transaction() as conn:
            found = conn.execute(
                sa.select(c.id).where(this_job).with_for_update()).first()
            if found is None:
                raise KeyError(job_id)
            conn.execute(sa.insert(feedback).values(
                job_id=job_id, tenant=tenant, job_created_at=created_at, at=at,
                verdict=item.verdict, decision=decision, defects=item.defects, note=item.note,
                by=item.by))
            conn.execute(
                sa.update(jobs)
                .where(this_job, sa.or_(c.feedback_at.is_(None), c.feedback_at <= at))
                .values(feedback=item.verdict, feedback_decision=decision, feedback_at=at,
                        feedback_by=item.by))

    # --- reads ---

    def indexed(self, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` are in the index (any tenant; ids are unguessable)."""
        wanted = list(dict.fromkeys(job_ids))

        def read(conn: sa.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start:start + 1000]
                found.update(conn.execute(
                    sa.select(jobs.c.id).where(jobs.c.id.in_(chunk))).scalars())
            return found

        return self._run(read) if wanted else set()

    def _where(self, tenant: str, filters: JobFilter) -> list[sa.ColumnElement[bool]]:
        c = jobs.c
        where: list[sa.ColumnElement[bool]] = [c.tenant == tenant]
        for name in ("line", "camera", "batch_id"):
            value = getattr(filters, name)
            if value is not None:
                where.append(c[name] == value)
        if filters.decision is not None:
            where.append(c.decision == filters.decision.value)
        if filters.status is not None:
            where.append(c.status == filters.status.value)
        if filters.since is not None:
            where.append(c.created_at >= as_utc(filters.since))
        if filters.until is not None:
            where.append(c.created_at < as_utc(filters.until))
        if filters.feedback == "none":
            where.append(c.feedback.is_(None))
        elif filters.feedback == "any":
            where.append(c.feedback.isnot(None))
        elif filters.feedback is not None:
            where.append(c.feedback == filters.feedback)
        return where

    @staticmethod
    def _after(created_at: datetime, job_id: str) -> sa.ColumnElement[bool]:
        """Rows after (created_at, job_id) in the newest-first order. The plain bound on
        created_at lets the index range (and PostgreSQL's partition pruning) use it."""
        c = jobs.c
        return sa.and_(c.created_at <= created_at,
                       sa.or_(c.created_at < created_at, c.id < job_id))

    def _newest(self, columns: Sequence[Any], where: list[sa.ColumnElement[bool]],
                limit: int, filters: JobFilter,
                position: tuple[datetime, str] | None) -> list[Any]:
        """The first ``limit`` rows matching ``where`` in the newest-first order after
        ``position`` (created_at, id), or from the newest when None.

        It asks the recent past first: the rows at or after ``top - window`` (``top`` the
        position's time, else ``until``, else now) for each window in _WINDOWS, then all of
        them. A window that yields ``limit`` rows holds exactly the answer, since every row
        outside it is older than every row in it. On PostgreSQL the bound lets the planner
        skip all older day partitions: planning a query over every partition costs more
        than running it (~0.4 ms a partition), and most pages come from the newest day.
        """
        where = list(where)
        if position is not None:
            where.append(self._after(*position))
        top = position[0] if position is not None else (
            as_utc(filters.until) if filters.until is not None else datetime.now(UTC))
        since = as_utc(filters.since) if filters.since is not None else None
        statements = []
        for window in _WINDOWS:
            bound = top - window
            if since is not None and since >= bound:
                break  # the filter's own bound is narrower: the plain query is as cheap
            statements.append(self._newest_first(
                columns, [*where, jobs.c.created_at >= bound], limit))
        statements.append(self._newest_first(columns, where, limit))

        def read(conn: sa.Connection) -> list[Any]:
            for statement in statements:
                rows = conn.execute(statement).all()
                if len(rows) >= limit:
                    break
            return rows

        return self._run(read)

    @staticmethod
    def _newest_first(columns: Sequence[Any], where: list[sa.ColumnElement[bool]],
                      limit: int) -> sa.Select[Any]:
        return (sa.select(*columns).where(*where)
                .order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit))

    def list_jobs(self, tenant: str, filters: JobFilter, limit: int = 50,
                  cursor: str | None = None) -> Page:
        """One page of the tenant's jobs matching ``filters``, newest first (created_at,
        then id, descending), by keyset pagination: pass ``next_cursor`` back for the next
        page (None on the last). A malformed cursor raises ValueError, as does a limit
        outside 1..MAX_PAGE.

        Each job is a JSON-ready summary::

            {"id", "line", "camera", "batch_id", "status": "done"|"failed",
             "created_at", "finished_at" (ISO 8601 UTC with Z),
             "decision": "PASS"|"REVIEW"|"REJECT"|None, "score": float|None,
             "defects": {class: regions}, "defect_count": int, "error_code": str|None,
             "model_version": str|None, "thresholds": {"pass", "reject"},
             "feedback": None | {"verdict": "confirm"|"correct", "decision", "at", "by"}}
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}")
        position = decode_cursor(cursor) if cursor is not None else None
        rows = self._newest(_SUMMARY_COLUMNS, self._where(tenant, filters), limit + 1, filters,
                            position)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return Page(jobs=[summary(row) for row in rows], next_cursor=next_cursor)

    def iter_rows(self, tenant: str, filters: JobFilter, chunk: int = 1000) -> Iterator[dict]:
        """Every matching job as a flat export row (EXPORT_COLUMNS, in order), newest first,
        read in keyset chunks of ``chunk`` rows (constant memory; no connection is held
        between chunks, so a slow consumer holds no transaction open)."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        base = self._where(tenant, filters)
        position: tuple[datetime, str] | None = None
        while True:
            rows = self._newest(_EXPORT_SELECT, base, chunk, filters, position)
            for row in rows:
                yield export_row(row)
            if len(rows) < chunk:
                return
            position = (rows[-1].created_at, rows[-1].id)

    def lines(self, tenant: str, since: datetime | None = None) -> list[dict]:
        """The tenant's lines (jobs created at or after ``since``, all when None), by name::

            [{"name", "cameras": [sorted names], "last_seen": ISO time of the newest job,
              "total", "PASS", "REVIEW", "REJECT", "failed"}]
        """
        c = jobs.c
        where = [c.tenant == tenant]
        if since is not None:
            where.append(c.created_at >= as_utc(since))
        statement = (sa.select(c.line, c.camera, sa.func.max(c.created_at).label("last"),
                               *_tally())
                     .where(*where).group_by(c.line, c.camera))
        found: dict[str, dict[str, Any]] = {}
        for row in self._run(lambda conn: conn.execute(statement).all()):
            line = found.setdefault(row.line, {
                "name": row.line, "cameras": [], "last_seen": None, "total": 0, "PASS": 0,
                "REVIEW": 0, "REJECT": 0, "failed": 0})
            if row.camera is not None:
                line["cameras"].append(row.camera)
            last = as_utc(row.last)
            if line["last_seen"] is None or last > line["last_seen"]:
                line["last_seen"] = last
            for key in ("total", *_DECISIONS, "failed"):
                line[key] += int(getattr(row, key) or 0)
        result = []
        for name in sorted(found):
            line = found[name]
            line["cameras"].sort()
            line["last_seen"] = iso(line["last_seen"])
            result.append(line)
        return result

    def line_stats(self, tenant: str, line: str, since: datetime, until: datetime,
                   bucket: Literal["minute", "hour", "day"]) -> dict:
        """A line's counts over [since, until), per time bucket and per camera, aggregated
        in SQL (date_trunc on PostgreSQL, strftime on SQLite; buckets are UTC)::

            {"line", "bucket", "since", "until",
             "buckets": [{"start", <counts>}]    only the non-empty buckets, oldest first,
             "cameras": {camera: <counts>},      over the whole range ("" = no camera),
             "totals": <counts>}

        where <counts> is ``total, PASS, REVIEW, REJECT, failed`` (jobs), ``review_rate`` and
        ``reject_rate`` (shares of the decided jobs, PASS+REVIEW+REJECT; None when there are
        none) and ``images_per_min`` (total over the minutes of the bucket, or of the range,
        that lie inside [since, until)). ValueError for an empty range, an unknown bucket or
        more than MAX_BUCKETS buckets.
        """
        if bucket not in _BUCKET_MINUTES:
            raise ValueError(f"bucket must be one of {sorted(_BUCKET_MINUTES)}")
        since, until = as_utc(since), as_utc(until)
        if until <= since:
            raise ValueError("until must be after since")
        size = timedelta(minutes=_BUCKET_MINUTES[bucket])
        if (until - since) / size > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} {bucket} buckets")
        c = jobs.c
        # The bucket's unit or format comes from the fixed tables above, never from input.
        if self.postgres:
            start = sa.func.date_trunc(sa.literal_column(f"'{bucket}'"),
                                       sa.func.timezone(sa.literal_column("'UTC'"),
                                                        c.created_at))
        else:
            start = sa.func.strftime(sa.literal_column(f"'{_SQLITE_BUCKET[bucket]}'"),
                                     c.created_at)
        statement = (sa.select(start.label("start"), c.camera, *_tally())
                     .where(c.tenant == tenant, c.line == line, c.created_at >= since,
                            c.created_at < until)
                     .group_by(start, c.camera))
        keys = ("total", *_DECISIONS, "failed")
        buckets: dict[datetime, list[int]] = {}
        cameras: dict[str, list[int]] = {}
        for row in self._run(lambda conn: conn.execute(statement).all()):
            moment = row.start
            if isinstance(moment, str):
                moment = datetime.fromisoformat(moment)
            moment = as_utc(moment)
            numbers = [int(getattr(row, key) or 0) for key in keys]
            for table, key in ((buckets, moment), (cameras, row.camera or "")):
                sums = table.setdefault(key, [0] * len(keys))
                for i, number in enumerate(numbers):
                    sums[i] += number
        minutes = (until - since) / timedelta(minutes=1)
        totals = [sum(sums[i] for sums in cameras.values()) for i in range(len(keys))]
        return {
            "line": line,
            "bucket": bucket,
            "since": iso(since),
            "until": iso(until),
            "buckets": [
                {"start": iso(moment), **_counts(*sums, minutes=(
                    min(moment + size, until) - max(moment, since)) / timedelta(minutes=1))}
                for moment, sums in sorted(buckets.items())],
            "cameras": {name: _counts(*sums, minutes=minutes)
                        for name, sums in sorted(cameras.items())},
            "totals": _counts(*totals, minutes=minutes),
        }

    def batch(self, tenant: str, batch_id: str) -> dict | None:
        """The batch's indexed jobs (summaries, oldest first) and their counts::

            {"batch_id", "jobs": [...], "counts": {"status": {"done", "failed"},
                                                   "decision": {"PASS", "REVIEW", "REJECT"}}}

        None when no job of the batch is indexed for this tenant. Jobs still running are not
        in the index: compare len(jobs) with the batch's size."""
        c = jobs.c
        statement = (sa.select(*_SUMMARY_COLUMNS)
                     .where(c.tenant == tenant, c.batch_id == batch_id)
                     .order_by(c.created_at, c.id))
        rows = self._run(lambda conn: conn.execute(statement).all())
        if not rows:
            return None
        statuses = Counter(row.status for row in rows)
        decisions = Counter(row.decision for row in rows if row.decision is not None)
        return {
            "batch_id": batch_id,
            "jobs": [summary(row) for row in rows],
            "counts": {
                "status": {s: statuses[s] for s in (Status.DONE.value, Status.FAILED.value)},
                "decision": {d: decisions[d] for d in _DECISIONS},
            },
        }

    def feedback_history(self, tenant: str, job_id: str) -> list[dict]:
        """Every feedback entry of the job, oldest first: {"at", "verdict", "decision",
        "defects", "note", "by"}."""
        f = feedback.c
        statement = (sa.select(f.at, f.verdict, f.decision, f.defects, f.note, f.by)
                     .where(f.tenant == tenant, f.job_id == job_id).order_by(f.at, f.id))
        return [{"at": iso(row.at), "verdict": row.verdict, "decision": row.decision,
                 "defects": row.defects, "note": row.note, "by": row.by}
                for row in self._run(lambda conn: conn.execute(statement).all())]

    # --- retention ---

    def expired(self, before: datetime, limit: int = 10000, *,
                after: str | None = None) -> list[str]:
        """Ids of jobs (any tenant) created before ``before``, oldest first, at most
        ``limit``. To walk them all, pass the last id of one call as ``after`` of the next
        (ValueError when that job is not indexed)::

            last = None
            while ids := index.expired(cutoff, 10_000, after=last):
                ...delete their objects...; last = ids[-1]
            index.drop_before(cutoff)
        """
        c = jobs.c
        before = as_utc(before)

        def read(conn: sa.Connection) -> list[str]:
            where = [c.created_at < before]
            if after is not None:
                stamp = conn.execute(sa.select(c.created_at).where(c.id == after)
                                     .limit(1)).scalar()
                if stamp is None:
                    raise ValueError(f"job {after} is not indexed")
                where += [c.created_at >= stamp,
                          sa.or_(c.created_at > stamp, c.id > after)]
            return list(conn.execute(sa.select(c.id).where(*where)
                                     .order_by(c.created_at, c.id).limit(limit)).scalars())

        return self._run(read)

    def drop_before(self, before: datetime) -> int:
        """Retention: remove every job (any tenant) created before ``before`` and the
        feedback of those jobs; returns the job rows removed. On PostgreSQL whole day
        partitions before it are dropped (no row-by-row delete, nothing left to vacuum);
        the rest of the older rows (in the partition straddling ``before``, and in DEFAULT)
        are deleted. Pass a midnight UTC to drop whole partitions only. On SQLite: DELETE."""
        before = as_utc(before)
        with self._transaction() as conn:
            removed = 0
            if self.postgres:
                partitions.lock(conn)
                removed += partitions.drop_before(conn, before)
            removed += conn.execute(sa.delete(jobs).where(jobs.c.created_at < before)).rowcount
            conn.execute(sa.delete(feedback).where(feedback.c.job_created_at < before))
        return removed

    def close(self) -> None:
        """Close the pool's connections."""
        self._engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers work while a writer writes; NORMAL sync is safe with WAL."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
