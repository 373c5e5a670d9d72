"""The results index on real PostgreSQL and SQLite: every query is checked against an
expectation computed independently, in Python, from the job records that were indexed."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from inspectq.config import Settings
from inspectq.index import (
    EXPORT_COLUMN_DOCS,
    IndexUnavailable,
    JobFilter,
    ResultsIndex,
    migrations_config,
)
from inspectq.index import partitions as parts
from inspectq.index.schema import metadata
from inspectq.jobs import JobRecord, Status
from inspectq.result import Decision, QualityIssue
from tests.index.conftest import (
    create_database,
    drop_database,
    make_record,
    postgres_url,
)

TENANT = "acme"
OTHER = "other"
LINES = ("line-1", "line-2", "line-3")
CAMERAS = ("cam-1", "cam-2", None)
#: The newest migration.
HEAD = ScriptDirectory.from_config(migrations_config()).get_current_head()
BATCHES = ("b_AAAAAAAAAAAAAAAAAAAAAA", "b_BBBBBBBBBBBBBBBBBBBBBB")


def created(record: JobRecord) -> datetime:
    return datetime.fromisoformat(record.created_at)


def decision_of(record: JobRecord) -> str | None:
    return record.result.decision.value if record.result is not None else None


def newest_first(records: list[JobRecord]) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: (created(r), r.id), reverse=True)]


def dataset(now: datetime, seed: int = 7) -> list[JobRecord]:
    """~300 jobs of two tenants over the three hours before ``now``: every line and camera,
    a decision mix with failures, batches, and runs of jobs sharing one created_at (so the
    id breaks ties in the order and across page boundaries)."""
    rng = random.Random(seed)
    records: list[JobRecord] = []
    for tenant, count in ((TENANT, 240), (OTHER, 60)):
        moment = now
        for i in range(count):
            if i % 5:  # every fifth job shares the previous one's created_at
                moment = now - timedelta(milliseconds=rng.randrange(3 * 3600 * 1000))
            outcome = rng.choices(["PASS", "REVIEW", "REJECT", None], [60, 20, 10, 10])[0]
            decision = Decision(outcome) if outcome else None
            records.append(make_record(
                tenant=tenant, created_at=moment, line=rng.choice(LINES),
                camera=rng.choice(CAMERAS), decision=decision,
                classes=[] if decision in (None, Decision.PASS)
                else rng.sample(["scratch", "pit", "crack", "stain"], rng.randint(1, 3)),
                batch_id=rng.choice([None, None, *BATCHES]),
                quality=[QualityIssue.BLANK] if rng.random() < 0.05 else []))
    return records


def walk(index: ResultsIndex, tenant: str, filters: JobFilter, limit: int) -> list[dict]:
    """Every page of a listing, checking that only the last may be short."""
    jobs: list[dict] = []
    cursor = None
    while True:
        page = index.list_jobs(tenant, filters, limit=limit, cursor=cursor)
        jobs += page.jobs
        if page.next_cursor is None:
            assert len(page.jobs) <= limit
            return jobs
        assert len(page.jobs) == limit
        cursor = page.next_cursor


def matches(record: JobRecord, f: JobFilter, feedback: dict[str, str]) -> bool:
    verdict = feedback.get(record.id)
    return all((
        f.line is None or record.line == f.line,
        f.camera is None or record.camera == f.camera,
        f.decision is None or decision_of(record) == f.decision.value,
        f.status is None or record.status == f.status,
        f.since is None or created(record) >= f.since,
        f.until is None or created(record) < f.until,
        f.batch_id is None or record.batch_id == f.batch_id,
        f.feedback is None
        or (f.feedback == "none" and verdict is None)
        or (f.feedback == "any" and verdict is not None)
        or f.feedback == verdict,
    ))


# --- schema -------------------------------------------------------------------------------


def test_migrating_again_changes_nothing_and_the_tables_match_the_code(
        index: ResultsIndex) -> None:
    index.migrate()
    index.migrate()
    index.maintain()
    with index._engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_name": lambda name, kind, _: kind != "table" or name in metadata.tables})
        assert compare_metadata(context, metadata) == []
        assert conn.execute(sa.text("SELECT version_num FROM inspectq_index_version")
                            ).scalars().all() == [HEAD]
        if index.postgres:  # line_stats reads the per-line index alone
            definition = conn.execute(sa.text(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_tenant_line_created'")
            ).scalar_one()
            assert definition.endswith("INCLUDE (camera, status, decision)")


def test_settings_build_the_index(tmp_path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'var' / 'index.sqlite3'}",
                        index_batch_size=100, retention_days=30)
    index = ResultsIndex.from_settings(settings)
    try:
        index.migrate()
        index.ping()
        assert (index.batch_size, index.retention_days) == (100, 30)
    finally:
        index.close()
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults["database_url"] == "sqlite:///var/index.sqlite3"
    assert (defaults["retention_days"], defaults["index_batch_size"]) == (0, 500)


# --- writes -------------------------------------------------------------------------------


def test_upsert_indexes_finished_jobs_once(index: ResultsIndex, now: datetime) -> None:
    done = [make_record(tenant=TENANT, created_at=now - timedelta(minutes=i),
                        decision=Decision.REVIEW, classes=["scratch", "pit", "scratch"])
            for i in range(5)]
    failed = make_record(tenant=TENANT, created_at=now, decision=None)
    running = [make_record(tenant=TENANT, created_at=now, status=s)
               for s in (Status.QUEUED, Status.PROCESSING, Status.RETRYING)]
    assert index.upsert([*done, failed, *running]) == 6
    assert index.upsert([*done, failed, *running, done[0]]) == 6  # again, and a duplicate
    assert index.upsert(running) == 0
    assert index.upsert([]) == 0
    jobs = walk(index, TENANT, JobFilter(), limit=50)
    assert sorted(j["id"] for j in jobs) == sorted(r.id for r in [*done, failed])
    assert index.indexed([r.id for r in [*done, *running]] + ["j_missing"]) == {
        r.id for r in done}

    first = next(j for j in jobs if j["id"] == done[0].id)
    assert first == {
        "id": done[0].id, "line": "line-1", "camera": "cam-1", "batch_id": None,
        "status": "done", "created_at": done[0].created_at,
        "finished_at": done[0].updated_at, "decision": "REVIEW", "score": 0.5,
        "defects": {"pit": 1, "scratch": 2}, "defect_count": 3, "error_code": None,
        "model_version": "3", "thresholds": {"pass": 0.4, "reject": 0.65}, "feedback": None}
    bad = next(j for j in jobs if j["id"] == failed.id)
    assert (bad["status"], bad["decision"], bad["score"], bad["error_code"], bad["defects"]) == (
        "failed", None, None, "image_undecodable", {})

    # A failed job replayed to done: the same row, now done.
    replayed = make_record(tenant=TENANT, created_at=created(failed), decision=Decision.PASS,
                           job_id=failed.id)
    assert index.upsert([replayed]) == 1
    [row] = index.list_jobs(TENANT, JobFilter(status=Status.DONE, decision=Decision.PASS)).jobs
    assert row["id"] == failed.id
    assert len(walk(index, TENANT, JobFilter(), limit=50)) == 6


def test_a_large_batch_is_written_whole(index: ResultsIndex, now: datetime) -> None:
    records = [make_record(tenant=TENANT, created_at=now - timedelta(seconds=i))
               for i in range(1500)]
    assert index.upsert(records) == 1500
    assert index.indexed([r.id for r in records]) == {r.id for r in records}


# --- listings -----------------------------------------------------------------------------


def _filters(now: datetime) -> list[JobFilter]:
    window = dict(since=now - timedelta(minutes=100), until=now - timedelta(minutes=40))
    return [
        JobFilter(),
        JobFilter(line="line-2"),
        JobFilter(camera="cam-1"),
        JobFilter(decision=Decision.REVIEW),
        JobFilter(status=Status.FAILED),
        JobFilter(status=Status.QUEUED),
        JobFilter(**window),
        JobFilter(since=now - timedelta(minutes=30)),
        JobFilter(until=now - timedelta(minutes=150)),
        JobFilter(batch_id=BATCHES[0]),
        JobFilter(feedback="none"),
        JobFilter(feedback="any"),
        JobFilter(feedback="confirm"),
        JobFilter(feedback="correct"),
        JobFilter(line="line-1", decision=Decision.PASS),
        JobFilter(line="line-3", camera="cam-2", **window),
        JobFilter(line="no-such-line"),
    ]


def test_every_page_of_every_filter_holds_exactly_the_matching_jobs(
        index: ResultsIndex, now: datetime) -> None:
    records = dataset(now)
    assert index.upsert(records) == len(records)
    rng = random.Random(3)
    feedback: dict[str, str] = {}
    for record in rng.sample([r for r in records if r.tenant == TENANT], 30):
        verdict = rng.choice(["confirm", "correct"])
        index.record_feedback(TENANT, record.id, created(record),
                              {"verdict": verdict, "decision": "REJECT", "by": "op"})
        feedback[record.id] = verdict
    other_ids = {r.id for r in records if r.tenant == OTHER}

    for filters in _filters(now):
        expected = newest_first([r for r in records
                                 if r.tenant == TENANT and matches(r, filters, feedback)])
        for limit in (7, 50):
            got = [job["id"] for job in walk(index, TENANT, filters, limit)]
            assert got == expected, (filters, limit)
            assert not other_ids & set(got)
        assert [row["id"] for row in index.iter_rows(TENANT, filters, chunk=13)] == expected
    assert len(newest_first([r for r in records if r.tenant == TENANT])) == 240
    assert sorted(j["id"] for j in walk(index, OTHER, JobFilter(), 100)) == sorted(other_ids)
    assert index.list_jobs("nobody", JobFilter()).jobs == []


def test_listings_reach_back_through_the_whole_history(
        index: ResultsIndex, now: datetime) -> None:
    """Listings look at the last day, week and five weeks first: pages that straddle those
    windows, sparse filters and jobs dated ahead of the clock still come out exactly."""
    rng = random.Random(21)
    offsets = [timedelta(hours=rng.uniform(-30, 24 * 90)) for _ in range(150)]
    offsets += [timedelta(hours=h) for h in (23.9, 24.1, 24 * 7 - 0.1, 24 * 7 + 0.1, 24 * 35)]
    records = [make_record(tenant=TENANT, created_at=now - offset, line=rng.choice(LINES),
                           decision=rng.choice([Decision.PASS] * 8 + [Decision.REJECT]))
               for offset in offsets]
    records.append(make_record(tenant=OTHER, created_at=now - timedelta(days=3)))
    index.upsert(records)
    for filters in (JobFilter(), JobFilter(decision=Decision.REJECT),
                    JobFilter(line="line-2", decision=Decision.REJECT),
                    JobFilter(until=now - timedelta(days=20)),
                    JobFilter(since=now - timedelta(days=10)),
                    JobFilter(since=now - timedelta(days=50), until=now - timedelta(days=6)),
                    JobFilter(line="no-such-line")):
        expected = newest_first([r for r in records
                                 if r.tenant == TENANT and matches(r, filters, {})])
        for limit in (1, 7, 200):
            assert [j["id"] for j in walk(index, TENANT, filters, limit)] == expected
        assert [r["id"] for r in index.iter_rows(TENANT, filters, chunk=6)] == expected


def test_since_is_inclusive_and_until_exclusive(index: ResultsIndex, now: datetime) -> None:
    times = [now - timedelta(seconds=s) for s in (40, 30, 30, 20, 10)]
    records = [make_record(tenant=TENANT, created_at=t) for t in times]
    index.upsert(records)
    since, until = now - timedelta(seconds=30), now - timedelta(seconds=10)
    got = walk(index, TENANT, JobFilter(since=since, until=until), limit=1)
    assert [j["id"] for j in got] == newest_first(records[1:4])
    # A naive datetime is UTC.
    naive = JobFilter(since=since.replace(tzinfo=None), until=until.replace(tzinfo=None))
    assert [j["id"] for j in walk(index, TENANT, naive, limit=2)] == newest_first(records[1:4])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "", "not base64!", "é", "AAAA", "////",
    _b64(b"1|"), _b64(b"1|2024|j_x"),  # no id; not a time
    _b64(b"2|2024-01-01T00:00:00+00:00|j_x"),  # an unknown version
    _b64(b"1|2024-01-01T00:00:00|j_x"),  # a time without its zone
    _b64(b"1|2024-01-01T00:00:00+00:00|"),  # an empty id
    _b64(b"\xff\xfe|x"),  # not UTF-8
])
def test_a_malformed_cursor_is_a_value_error(index: ResultsIndex, cursor: str) -> None:
    with pytest.raises(ValueError):
        index.list_jobs(TENANT, JobFilter(), cursor=cursor)
    good = _b64(b"1|2024-01-01T00:00:00+00:00|j_x")  # well formed: simply no older jobs
    assert index.list_jobs(TENANT, JobFilter(), cursor=good).jobs == []


def test_limits_are_checked(index: ResultsIndex) -> None:
    for limit in (0, -1, 1001):
        with pytest.raises(ValueError):
            index.list_jobs(TENANT, JobFilter(), limit=limit)
    with pytest.raises(ValueError):
        JobFilter(lines="x")  # a misspelt filter is an error, not ignored


def test_a_cursor_never_reaches_another_tenant(index: ResultsIndex, now: datetime) -> None:
    mine = [make_record(tenant=TENANT, created_at=now - timedelta(seconds=i)) for i in range(3)]
    theirs = [make_record(tenant=OTHER, created_at=now - timedelta(seconds=i)) for i in range(3)]
    index.upsert(mine + theirs)
    page = index.list_jobs(OTHER, JobFilter(), limit=1)
    rest = walk_from(index, TENANT, page.next_cursor)
    assert {j["id"] for j in rest} <= {r.id for r in mine}


def walk_from(index: ResultsIndex, tenant: str, cursor: str | None) -> list[dict]:
    jobs = []
    while cursor is not None:
        page = index.list_jobs(tenant, JobFilter(), limit=1, cursor=cursor)
        jobs += page.jobs
        cursor = page.next_cursor
    return jobs


# --- exports ------------------------------------------------------------------------------


def test_export_rows_are_flat_one_per_job(index: ResultsIndex, now: datetime) -> None:
    records = dataset(now, seed=11)
    index.upsert(records)
    mine = [r for r in records if r.tenant == TENANT]
    rows = index.iter_rows(TENANT, JobFilter(), chunk=50)
    assert isinstance(rows, Iterator)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(ResultsIndex.EXPORT_COLUMNS)
    seen = []
    for row in rows:
        assert list(row) == ResultsIndex.EXPORT_COLUMNS
        assert all(v is None or isinstance(v, str | int | float) for v in row.values())
        writer.writerow(row.values())
        seen.append(row)
    assert [r["id"] for r in seen] == newest_first(mine)
    assert list(EXPORT_COLUMN_DOCS) == ResultsIndex.EXPORT_COLUMNS
    assert all(EXPORT_COLUMN_DOCS.values())

    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(parsed) == len(mine)
    by_id = {r.id: r for r in mine}
    for row in parsed:
        record = by_id[row["id"]]
        assert row["created_at"] == record.created_at
        assert row["line"] == record.line and row["camera"] == (record.camera or "")
        assert row["decision"] == (decision_of(record) or "")
        classes = sorted({d.class_name for d in record.result.defects}) if record.result else []
        assert row["defect_classes"] == ";".join(classes)
        assert json.loads(row["metadata"]) == record.metadata
        counts = Counter(d.class_name for d in record.result.defects) if record.result else {}
        assert json.loads(row["defects"]) == counts
        assert len(json.loads(row["regions"])) == sum(counts.values())
        if record.result and record.result.quality.issues:
            assert row["quality_issues"] == "blank"


# --- statistics ---------------------------------------------------------------------------


def _truncate(moment: datetime, bucket: str) -> datetime:
    if bucket == "minute":
        return moment.replace(second=0, microsecond=0)
    if bucket == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _recount(records: list[JobRecord]) -> tuple[int, int, int, int, int]:
    decisions = Counter(decision_of(r) for r in records)
    failed = sum(r.status is Status.FAILED for r in records)
    return (len(records), decisions["PASS"], decisions["REVIEW"], decisions["REJECT"], failed)


def _numbers(counts: dict) -> tuple[int, int, int, int, int]:
    return (counts["total"], counts["PASS"], counts["REVIEW"], counts["REJECT"],
            counts["failed"])


@pytest.mark.parametrize("bucket", ["minute", "hour", "day"])
def test_line_stats_equal_a_recount(index: ResultsIndex, now: datetime, bucket: str) -> None:
    records = dataset(now, seed=5)
    index.upsert(records)
    since = now - timedelta(minutes=150, seconds=17)
    until = now - timedelta(minutes=20)
    stats = index.line_stats(TENANT, "line-1", since, until, bucket)
    inside = [r for r in records if r.tenant == TENANT and r.line == "line-1"
              and since <= created(r) < until]
    assert inside

    per_bucket: dict[datetime, list[JobRecord]] = defaultdict(list)
    per_camera: dict[str, list[JobRecord]] = defaultdict(list)
    for record in inside:
        per_bucket[_truncate(created(record), bucket)].append(record)
        per_camera[record.camera or ""].append(record)

    assert (stats["line"], stats["bucket"]) == ("line-1", bucket)
    assert [datetime.fromisoformat(b["start"]) for b in stats["buckets"]] == sorted(per_bucket)
    for entry in stats["buckets"]:
        group = per_bucket[datetime.fromisoformat(entry["start"])]
        assert _numbers(entry) == _recount(group)
        decided = sum(_recount(group)[1:4])
        assert entry["reject_rate"] == (
            pytest.approx(_recount(group)[3] / decided, abs=1e-6) if decided else None)
    assert {name: _numbers(c) for name, c in stats["cameras"].items()} == {
        name: _recount(group) for name, group in per_camera.items()}
    assert _numbers(stats["totals"]) == _recount(inside)
    minutes = (until - since).total_seconds() / 60
    assert stats["totals"]["images_per_min"] == pytest.approx(len(inside) / minutes, rel=1e-4)
    first = stats["buckets"][0]
    start = datetime.fromisoformat(first["start"])
    size = {"minute": 1, "hour": 60, "day": 1440}[bucket]
    overlap = (min(start + timedelta(minutes=size), until) - max(start, since))
    assert first["images_per_min"] == pytest.approx(
        first["total"] / (overlap.total_seconds() / 60), rel=1e-4)


def test_line_stats_checks_its_arguments(index: ResultsIndex, now: datetime) -> None:
    with pytest.raises(ValueError):
        index.line_stats(TENANT, "line-1", now, now, "hour")
    with pytest.raises(ValueError):
        index.line_stats(TENANT, "line-1", now - timedelta(hours=1), now, "week")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        index.line_stats(TENANT, "line-1", now - timedelta(days=60), now, "minute")
    empty = index.line_stats(TENANT, "line-1", now - timedelta(hours=1), now, "hour")
    assert empty["buckets"] == [] and empty["cameras"] == {}
    assert empty["totals"]["total"] == 0 and empty["totals"]["reject_rate"] is None


def test_lines_list_every_line_with_its_cameras_and_counts(
        index: ResultsIndex, now: datetime) -> None:
    records = dataset(now, seed=9)
    index.upsert(records)
    for since in (None, now - timedelta(minutes=45)):
        mine = [r for r in records if r.tenant == TENANT
                and (since is None or created(r) >= since)]
        got = index.lines(TENANT, since=since)
        assert [line["name"] for line in got] == sorted({r.line for r in mine})
        for line in got:
            group = [r for r in mine if r.line == line["name"]]
            assert line["cameras"] == sorted({r.camera for r in group if r.camera})
            assert line["last_seen"] == max(group, key=created).created_at
            assert _numbers(line) == _recount(group)
    assert index.lines("nobody") == []


# --- feedback and batches -----------------------------------------------------------------


def test_the_latest_feedback_wins_and_the_history_is_kept(
        index: ResultsIndex, now: datetime) -> None:
    record = make_record(tenant=TENANT, created_at=now, decision=Decision.REVIEW,
                         classes=["pit"])
    index.upsert([record])
    at = [now + timedelta(minutes=m) for m in (1, 2, 3)]
    index.record_feedback(TENANT, record.id, created(record),
                          {"verdict": "confirm", "by": "ann", "at": at[0]})
    index.record_feedback(TENANT, record.id, created(record),
                          {"verdict": "correct", "decision": "REJECT", "by": "bob",
                           "at": at[2], "defects": [{"class": "crack"}], "note": "a crack"})
    # An entry that arrives late but was given earlier is history, not the state.
    index.record_feedback(TENANT, record.id, created(record),
                          {"verdict": "confirm", "by": "cat", "at": at[1]})
    [job] = index.list_jobs(TENANT, JobFilter()).jobs
    assert job["feedback"] == {"verdict": "correct", "decision": "REJECT",
                               "at": at[2].isoformat().replace("+00:00", ".000Z"),
                               "by": "bob"}
    history = index.feedback_history(TENANT, record.id)
    assert [(h["verdict"], h["by"]) for h in history] == [
        ("confirm", "ann"), ("confirm", "cat"), ("correct", "bob")]
    assert history[2]["defects"] == [{"class": "crack"}] and history[2]["note"] == "a crack"
    assert index.feedback_history(OTHER, record.id) == []

    index.upsert([record])  # indexing the job again keeps its feedback
    [job] = index.list_jobs(TENANT, JobFilter(feedback="correct")).jobs
    assert job["feedback"]["by"] == "bob"
    [row] = index.iter_rows(TENANT, JobFilter())
    assert (row["feedback"], row["feedback_decision"], row["feedback_by"]) == (
        "correct", "REJECT", "bob")

    with pytest.raises(KeyError):  # another tenant's job
        index.record_feedback(OTHER, record.id, created(record), {"verdict": "confirm"})
    with pytest.raises(KeyError):  # not indexed
        index.record_feedback(TENANT, "j_unknown", created(record), {"verdict": "confirm"})
    for bad in ({"verdict": "maybe"}, {"verdict": "correct", "decision": "MAYBE"}, {},
                {"verdict": "confirm", "extra": 1}):
        with pytest.raises(ValueError):
            index.record_feedback(TENANT, record.id, created(record), bad)
    assert len(index.feedback_history(TENANT, record.id)) == 3


def test_a_batch_counts_its_indexed_jobs(index: ResultsIndex, now: datetime) -> None:
    records = dataset(now, seed=13)
    index.upsert(records)
    for batch_id in BATCHES:
        members = [r for r in records if r.tenant == TENANT and r.batch_id == batch_id]
        got = index.batch(TENANT, batch_id)
        assert got is not None and got["batch_id"] == batch_id
        assert [j["id"] for j in got["jobs"]] == list(reversed(newest_first(members)))
        statuses = Counter(r.status.value for r in members)
        decisions = Counter(decision_of(r) for r in members if r.result)
        assert got["counts"] == {
            "status": {"done": statuses["done"], "failed": statuses["failed"]},
            "decision": {d: decisions[d] for d in ("PASS", "REVIEW", "REJECT")}}
    assert index.batch(TENANT, "b_CCCCCCCCCCCCCCCCCCCCCC") is None
    theirs = next(r for r in records if r.tenant == OTHER and r.batch_id)
    mine_too = any(r.tenant == TENANT and r.batch_id == theirs.batch_id for r in records)
    assert mine_too  # the same batch id under both tenants: each sees only its own jobs
    assert {j["id"] for j in index.batch(OTHER, theirs.batch_id)["jobs"]} == {
        r.id for r in records if r.tenant == OTHER and r.batch_id == theirs.batch_id}


# --- retention ----------------------------------------------------------------------------


def test_retention_removes_the_old_jobs_only(index: ResultsIndex) -> None:
    base = datetime(2001, 1, 10, tzinfo=UTC)
    index.maintain(now=base)  # PostgreSQL: partitions for Jan 9..17 (Jan 5 lands in DEFAULT)
    times = [base - timedelta(days=5), base - timedelta(days=1), base + timedelta(hours=3),
             base + timedelta(days=1, hours=2), base + timedelta(days=1, hours=8),
             base + timedelta(days=2)]
    records = [make_record(tenant=tenant, created_at=t + timedelta(seconds=i))
               for t in times for i, tenant in enumerate((TENANT, OTHER, TENANT))]
    index.upsert(records)
    index.maintain(now=base)  # moves Jan 5 out of DEFAULT into its own partition
    old = [r for r in records if created(r) < base + timedelta(days=1, hours=6)]
    index.record_feedback(TENANT, old[0].id, created(old[0]), {"verdict": "confirm"})
    cutoff = base + timedelta(days=1, hours=6)  # inside Jan 11: straddles a partition

    oldest_first = list(reversed(newest_first(old)))
    assert index.expired(cutoff) == oldest_first
    walked, last = [], None
    while ids := index.expired(cutoff, limit=4, after=last):
        walked += ids
        last = ids[-1]
    assert walked == oldest_first
    with pytest.raises(ValueError):
        index.expired(cutoff, after="j_unknown")

    assert index.drop_before(cutoff) == len(old)
    left = walk(index, TENANT, JobFilter(), 100) + walk(index, OTHER, JobFilter(), 100)
    assert sorted(j["id"] for j in left) == sorted(r.id for r in records if r not in old)
    assert index.expired(cutoff) == []
    assert index.feedback_history(TENANT, old[0].id) == []
    assert index.drop_before(cutoff) == 0
    if index.postgres:
        with index._engine.connect() as conn:
            days = parts.existing(conn)
        assert not [d for d in days if datetime(2001, 1, 1).date() <= d < cutoff.date()]
        assert cutoff.date() in days


# --- PostgreSQL partitions ----------------------------------------------------------------


@pytest.fixture
def pg(pg_index: ResultsIndex) -> ResultsIndex:
    with pg_index._engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE jobs, feedback"))
    return pg_index


def _default_rows(index: ResultsIndex) -> int:
    with index._engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM jobs_default")).scalar_one()


def test_maintain_makes_the_day_partitions_ahead(pg: ResultsIndex, now: datetime) -> None:
    pg.maintain(now=now)
    with pg._engine.connect() as conn:
        days = parts.existing(conn)
        bound = conn.execute(sa.text(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = :name"),
            {"name": parts.name_of(now.date())}).scalar_one()
    today = now.date()
    assert {today + timedelta(days=n) for n in range(-1, 8)} <= set(days)
    start = now.replace(hour=0)
    assert bound == (f"FOR VALUES FROM ('{start:%Y-%m-%d %H:%M:%S}+00') "
                     f"TO ('{start + timedelta(days=1):%Y-%m-%d %H:%M:%S}+00')")

    # A job of a day with no partition lands in DEFAULT; maintain moves it to its own.
    old = make_record(tenant=TENANT, created_at=now - timedelta(days=20))
    fresh = make_record(tenant=TENANT, created_at=now)
    pg.upsert([old, fresh])
    assert _default_rows(pg) == 1
    errors: list[Exception] = []

    def maintain() -> None:
        try:
            pg.maintain(now=now)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=maintain) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _default_rows(pg) == 0
    with pg._engine.connect() as conn:
        assert (now - timedelta(days=20)).date() in parts.existing(conn)
        where = conn.execute(sa.text("SELECT tableoid::regclass::text FROM jobs WHERE id = :id"),
                             {"id": old.id}).scalar_one()
    assert where == parts.name_of((now - timedelta(days=20)).date())
    assert [j["id"] for j in walk(pg, TENANT, JobFilter(), 10)] == [fresh.id, old.id]
    assert pg.upsert([old]) == 1  # the upsert still finds it in its new partition


def test_concurrent_migrations_are_safe(pg_url: str) -> None:
    name = "inspectq_index_test_migrate"
    create_database(name)
    indexes = [ResultsIndex(postgres_url(name)) for _ in range(4)]
    barrier = threading.Barrier(len(indexes))
    errors: list[Exception] = []

    def migrate(index: ResultsIndex) -> None:
        barrier.wait()
        try:
            index.migrate()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    try:
        threads = [threading.Thread(target=migrate, args=(i,)) for i in indexes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with indexes[0]._engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM inspectq_index_version")
                                ).scalars().all() == [HEAD]
    finally:
        for index in indexes:
            index.close()
        drop_database(name)


# --- an unreachable database --------------------------------------------------------------


def test_an_unreachable_database_raises_index_unavailable_quickly(now: datetime) -> None:
    index = ResultsIndex("postgresql+psycopg://postgres@127.0.0.1:1/inspectq")
    record = make_record(tenant=TENANT, created_at=now)
    calls = [
        index.ping, index.migrate, index.maintain,
        lambda: index.upsert([record]),
        lambda: index.list_jobs(TENANT, JobFilter()),
        lambda: list(index.iter_rows(TENANT, JobFilter())),
        lambda: index.indexed([record.id]),
        lambda: index.lines(TENANT),
        lambda: index.line_stats(TENANT, "line-1", now - timedelta(hours=1), now, "hour"),
        lambda: index.record_feedback(TENANT, record.id, now, {"verdict": "confirm"}),
        lambda: index.batch(TENANT, BATCHES[0]),
        lambda: index.expired(now),
        lambda: index.drop_before(now),
    ]
    try:
        for call in calls:
            started = time.monotonic()
            with pytest.raises(IndexUnavailable):
                call()
            assert time.monotonic() - started < 6
    finally:
        index.close()


def test_a_dropped_connection_is_replaced(pg: ResultsIndex, pg_url: str,
                                          now: datetime) -> None:
    """A server restart kills the pooled connections: the next call works on a new one."""
    pg.upsert([make_record(tenant=TENANT, created_at=now)])
    pg.ping()
    with sa.create_engine(pg_url).connect() as admin:
        killed = admin.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'inspectq-index' AND datname = current_database()")
        ).scalar_one()
    assert killed >= 1
    assert len(pg.list_jobs(TENANT, JobFilter()).jobs) == 1
