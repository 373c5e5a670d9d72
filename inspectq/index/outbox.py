"""Job callbacks in the results index's database: tenants' subscriptions and the durable
outbox of deliveries.

When a job ends, the indexer adds one delivery per target (the job's own ``callback_url``,
and each subscription of its tenant for all lines or its line) in the same database as the
index, so a delivery exists exactly when the job is indexed, and survives any process. The
sender (``workers.callbacks``) claims due deliveries, POSTs, and records each attempt:
``pending`` until a 2xx (``delivered``) or until ``retry_until`` passes (``failed``).
``(job_id, url)`` is unique, so indexing a job twice never sends twice.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from inspectq.index.results import ResultsIndex, iso
from inspectq.index.schema import UTCDateTime, metadata
from inspectq.jobs import JobRecord

subscriptions = sa.Table(
    "subscriptions", metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("line", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("subscriptions_tenant", "tenant"),
)

#: A new or removed subscription applies to jobs ended this long after it, at most.
SUBSCRIPTIONS_TTL_S = 5.0

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("job_id", sa.Text(), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("subscription_id", sa.Text(), nullable=True),
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("retry_until", UTCDateTime(), nullable=False),
    sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("last_status", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("job_id", "url", name="deliveries_job_url"),
    sa.Index("deliveries_due", "next_attempt_at",
             postgresql_where=sa.text("state = 'pending'"),
             sqlite_where=sa.text("state = 'pending'")),
    sa.Index("deliveries_tenant_job", "tenant", "job_id"),
)


@dataclass(frozen=True)
class Delivery:
    id: str
    tenant: str
    job_id: str
    url: str
    attempts: int
    retry_until: datetime


def _now() -> datetime:
    return datetime.now(UTC)


class Outbox:
    """Subscriptions and deliveries, on the results index's engine."""

    def __init__(self, index: ResultsIndex, retry_hours: float = 24.0) -> None:
        self._index = index
        self._horizon = timedelta(hours=retry_hours)
        self._subs: list[Any] = []
        self._subs_read_at = -SUBSCRIPTIONS_TTL_S

    def _current_subscriptions(self) -> list[Any]:
        """Every subscription, read again after SUBSCRIPTIONS_TTL_S: one query per few
        seconds instead of one per batch of ended jobs (the table is small)."""
        if time.monotonic() - self._subs_read_at >= SUBSCRIPTIONS_TTL_S:
            self._subs = self._index._run(
                lambda conn: conn.execute(sa.select(subscriptions)).all())
            self._subs_read_at = time.monotonic()
        return self._subs

    # --- subscriptions ---

    def subscribe(self, tenant: str, url: str, line: str | None = None) -> str:
        sub_id = "s_" + secrets.token_hex(6)
        with self._index._transaction() as conn:
            conn.execute(sa.insert(subscriptions).values(
                id=sub_id, tenant=tenant, url=url, line=line, created_at=_now()))
        return sub_id

    def subscriptions(self, tenant: str | None = None) -> list[dict]:
        statement = sa.select(subscriptions).order_by(subscriptions.c.created_at)
        if tenant is not None:
            statement = statement.where(subscriptions.c.tenant == tenant)
        rows = self._index._run(lambda conn: conn.execute(statement).all())
        return [{"id": r.id, "tenant": r.tenant, "url": r.url, "line": r.line,
                 "created_at": iso(r.created_at)} for r in rows]

    def unsubscribe(self, sub_id: str) -> bool:
        with self._index._transaction() as conn:
            return conn.execute(sa.delete(subscriptions).where(
                subscriptions.c.id == sub_id)).rowcount > 0

    # --- the outbox ---

    def add(self, records: Sequence[JobRecord]) -> int:
        """One pending delivery per target of each ended job (its callback_url, its
        tenant's matching subscriptions); an existing (job, url) is left alone. Returns how
        many were added."""
        ended = [record for record in records if record.status.terminal]
        if not ended:
            return 0
        subs = self._current_subscriptions()
        now = _now()
        rows = []
        for record in ended:
            targets = [(record.callback_url, None)] if record.callback_url else []
            targets += [(sub.url, sub.id) for sub in subs
                        if sub.tenant == record.tenant and sub.line in (None, record.line)]
            for url, sub_id in dict(targets).items():
                rows.append({"id": "d_" + secrets.token_hex(8), "tenant": record.tenant,
                             "job_id": record.id, "url": url, "subscription_id": sub_id,
                             "state": "pending", "attempts": 0, "created_at": now,
                             "next_attempt_at": now, "retry_until": now + self._horizon})
        if not rows:
            return 0
        dialect = postgresql if self._index.postgres else sqlite
        statement = dialect.insert(deliveries).on_conflict_do_nothing(
            index_elements=["job_id", "url"])
        with self._index._transaction() as conn:
            return conn.execute(statement, rows).rowcount

    def claim_due(self, limit: int, lease_s: float) -> list[Delivery]:
        """Up to ``limit`` pending deliveries whose time has come, pushed ``lease_s`` into
        the future so another sender does not take them meanwhile (SKIP LOCKED on
        PostgreSQL); the attempt's outcome then sets their next time or ends them."""
        now = _now()
        d = deliveries.c
        select = (sa.select(d.id, d.tenant, d.job_id, d.url, d.attempts, d.retry_until)
                  .where(d.state == "pending", d.next_attempt_at <= now)
                  .order_by(d.next_attempt_at).limit(limit))
        if self._index.postgres:
            select = select.with_for_update(skip_locked=True)
        with self._index._transaction() as conn:
            rows = conn.execute(select).all()
            if rows:
                conn.execute(sa.update(deliveries).where(d.id.in_([r.id for r in rows]))
                             .values(next_attempt_at=now + timedelta(seconds=lease_s)))
        return [Delivery(r.id, r.tenant, r.job_id, r.url, r.attempts, r.retry_until)
                for r in rows]

    def record_attempt(self, delivery_id: str, *, status: int | None, error: str | None,
                       delivered: bool, retry_at: datetime | None) -> None:
        """One attempt's outcome: delivered, or pending again at ``retry_at``, or (no
        ``retry_at``) failed for good."""
        now = _now()
        state = "delivered" if delivered else ("pending" if retry_at else "failed")
        with self._index._transaction() as conn:
            conn.execute(sa.update(deliveries).where(deliveries.c.id == delivery_id).values(
                state=state, attempts=deliveries.c.attempts + 1, last_attempt_at=now,
                last_status=status, last_error=error, next_attempt_at=retry_at or now,
                delivered_at=now if delivered else None))

    def of_job(self, tenant: str, job_id: str) -> list[dict]:
        """The delivery log of one job (``GET /v1/jobs/<id>/deliveries``)."""
        d = deliveries.c
        statement = (sa.select(deliveries).where(d.tenant == tenant, d.job_id == job_id)
                     .order_by(d.created_at, d.url))
        rows = self._index._run(lambda conn: conn.execute(statement).all())
        return [{"id": r.id, "url": r.url, "subscription_id": r.subscription_id,
                 "state": r.state, "attempts": r.attempts, "created_at": iso(r.created_at),
                 "last_attempt_at": iso(r.last_attempt_at), "last_status": r.last_status,
                 "last_error": r.last_error, "delivered_at": iso(r.delivered_at),
                 "next_attempt_at": iso(r.next_attempt_at) if r.state == "pending" else None}
                for r in rows]

    def replay(self, *, tenant: str | None = None, job_id: str | None = None,
               since: datetime | None = None, failed_only: bool = True) -> int:
        """Send matching deliveries again from now, with a fresh retry horizon (failed
        ones, or all with ``failed_only=False``); returns how many."""
        d = deliveries.c
        where = [d.state == "failed"] if failed_only else []
        if tenant is not None:
            where.append(d.tenant == tenant)
        if job_id is not None:
            where.append(d.job_id == job_id)
        if since is not None:
            where.append(d.created_at >= since)
        now = _now()
        with self._index._transaction() as conn:
            return conn.execute(sa.update(deliveries).where(*where).values(
                state="pending", next_attempt_at=now,
                retry_until=now + self._horizon)).rowcount


