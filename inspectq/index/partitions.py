"""PostgreSQL partitions of ``jobs``: one per UTC day, named ``jobs_pYYYYMMDD``, covering
``[day 00:00 UTC, next day 00:00 UTC)``, plus ``jobs_default`` for rows no partition covers.

* :func:`ensure` makes a day's partition. When the DEFAULT partition already holds rows of
  that day (a job indexed before its day's partition existed, or long after, in a backfill),
  it moves them into the new partition in the same transaction; PostgreSQL would refuse to
  create the partition otherwise.
* :func:`drop_before` drops the partitions that lie wholly before a time (a ``DROP TABLE``
  takes no longer for a full day than for an empty one and leaves nothing to vacuum), then
  deletes the older rows that remain in the partition straddling that time and in DEFAULT.

Every change runs in the caller's transaction under :data:`MAINTAIN_LOCK`
(``pg_advisory_xact_lock``), so several processes may maintain at once. Partition names and
bounds are made here from dates, never from input, so the DDL (which cannot take bound
parameters) is built from them as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

PREFIX = "jobs_p"
DEFAULT = "jobs_default"
#: maintain() makes the partitions from BEHIND_DAYS before today to AHEAD_DAYS after it.
AHEAD_DAYS = 7
BEHIND_DAYS = 1
#: Advisory lock keys (any two distinct bigints, "iq" + a number).
MIGRATE_LOCK = 0x6971_0000_0001
MAINTAIN_LOCK = 0x6971_0000_0002
LOCK_TIMEOUT = "5s"

_NAME = re.compile(r"^jobs_p(\d{8})$")


def name_of(day: date) -> str:
    return f"{PREFIX}{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    match = _NAME.fullmatch(name)
    return None if match is None else datetime.strptime(match.group(1), "%Y%m%d").date()


def bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def lock(conn: sa.Connection) -> None:
    """Serialise partition changes across processes until the transaction ends, and give
    up on any lock not granted within LOCK_TIMEOUT: making or dropping a partition takes an
    exclusive lock on ``jobs``, and while it waits behind a long query every new query
    would queue behind it. A maintenance run that gives up (IndexUnavailable) is simply run
    again later; partitions are made a week ahead."""
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MAINTAIN_LOCK})


def existing(conn: sa.Connection) -> dict[date, str]:
    """The day partitions of ``jobs`` now attached (DEFAULT excluded)."""
    names = conn.execute(sa.text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'jobs'::regclass")).scalars()
    found = {}
    for name in names:
        day = day_of(name)
        if day is not None:
            found[day] = name
    return found


def default_days(conn: sa.Connection) -> set[date]:
    """The UTC days of the rows in the DEFAULT partition (normally none)."""
    return set(conn.execute(sa.text(
        f"SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM {DEFAULT}")).scalars())


def _literal(moment: datetime) -> str:
    return f"'{moment:%Y-%m-%d %H:%M:%S}+00'"


def ensure(conn: sa.Connection, days: Iterable[date]) -> list[str]:
    """Make the missing partitions of ``days``; returns the names made. Call in a
    transaction, after :func:`lock`."""
    have = existing(conn)
    made = []
    for day in sorted(set(days)):
        if day in have:
            continue
        name = name_of(day)
        start, end = bounds(day)
        span = f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"
        stranded = conn.execute(sa.text(
            f"SELECT 1 FROM {DEFAULT} WHERE created_at >= :start AND created_at < :end "
            "LIMIT 1"), {"start": start, "end": end}).first()
        if stranded is None:
            conn.execute(sa.text(f"CREATE TABLE {name} PARTITION OF jobs {span}"))
        else:
            # Writers of DEFAULT wait until the rows are moved and the partition attached.
            conn.execute(sa.text(f"LOCK TABLE {DEFAULT} IN SHARE ROW EXCLUSIVE MODE"))
            conn.execute(sa.text(
                f"CREATE TABLE {name} (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
            conn.execute(sa.text(
                f"WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= :start "
                "AND created_at < :end RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved"), {"start": start, "end": end})
            # Attaching builds the partition's copies of the table's indexes.
            conn.execute(sa.text(f"ALTER TABLE jobs ATTACH PARTITION {name} {span}"))
        made.append(name)
    return made


def drop_before(conn: sa.Connection, before: datetime) -> int:
    """Drop the partitions wholly before ``before`` and delete the older rows left in the
    others; returns the job rows removed. Call in a transaction, after :func:`lock`."""
    removed = 0
    for day, name in sorted(existing(conn).items()):
        if bounds(day)[1] <= before:
            removed += conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
            conn.execute(sa.text(f"DROP TABLE {name}"))
    return removed
