"""Alert history and per-line alerting configuration in the results index.

Tables (made by the ``0003`` migration; described here on the index's ``metadata``)::

    alerts            one row per alert (tenant, line, camera, the rate and test that
                      tripped, rate / baseline / limit / window / events at the opening, the
                      offending job ids, opened_at; resolved_at and the resolving numbers;
                      acknowledged_at / _by / ack_note)
    alert_deliveries  one row per (alert, event, channel): state pending | deferred |
                      delivered | failed, attempts, last_error, last_attempt_at,
                      next_attempt_at, delivered_at
    line_alerting     one row per (tenant, line): the line's overrides (JSON)

An alert's *state* is ``resolved`` once resolved, else ``acknowledged`` once acknowledged,
else ``open``. Writes are idempotent upserts keyed on the alert id (derived from the tenant
and the monitor's alert, :func:`inspectq.alerting.alert_record_id`), so an event written
twice, or a resolution written before its opening, leaves the same row.

:class:`LineAlertingStore` keeps a Redis copy of each line's configuration in front of the
index, for the workers, which read it for every image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from inspectq import keyspace
from inspectq.alerting import AlertEvent, LineAlerting, transition_from
from inspectq.index.results import (
    MAX_PAGE,
    IndexUnavailable,
    ResultsIndex,
    decode_cursor,
    encode_cursor,
    iso,
)
from inspectq.index.schema import JSONType, UTCDateTime, metadata

AlertState = Literal["open", "acknowledged", "resolved"]
DeliveryState = Literal["pending", "deferred", "delivered", "failed"]
#: How long the Redis copy of a line's configuration lives (a PUT replaces it at once).
CONFIG_CACHE_TTL_S = 3600

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("line", sa.Text(), nullable=False),
    sa.Column("camera", sa.Text(), nullable=True),
    sa.Column("stream", sa.Text(), nullable=False),
    sa.Column("monitor_alert_id", sa.Text(), nullable=False),
    sa.Column("rate_kind", sa.Text(), nullable=False),
    sa.Column("test", sa.Text(), nullable=False),
    sa.Column("rate", sa.Double(), nullable=False),
    sa.Column("baseline", sa.Double(), nullable=False),
    sa.Column("limit_rate", sa.Double(), nullable=False),
    sa.Column("window_images", sa.Integer(), nullable=False),
    sa.Column("events", sa.Integer(), nullable=False),
    sa.Column("job_ids", JSONType, nullable=False),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
    sa.Column("resolution", JSONType, nullable=True),
    sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
    sa.Column("acknowledged_by", sa.Text(), nullable=True),
    sa.Column("ack_note", sa.Text(), nullable=True),
)
sa.Index("alerts_tenant_opened", alerts.c.tenant, alerts.c.opened_at.desc(),
         alerts.c.id.desc())
sa.Index("alerts_tenant_line_opened", alerts.c.tenant, alerts.c.line,
         alerts.c.opened_at.desc(), alerts.c.id.desc())

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column("alert_id", sa.Text(), nullable=False),
    sa.Column("event", sa.Text(), nullable=False),
    sa.Column("channel", sa.Text(), nullable=False),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint("alert_id", "event", "channel", name="alert_deliveries_pkey"),
)

line_alerting = sa.Table(
    "line_alerting",
    metadata,
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("line", sa.Text(), nullable=False),
    sa.Column("config", JSONType, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant", "line", name="line_alerting_pkey"),
)


def _stamp(unix: float | None) -> datetime | None:
    return None if unix is None else datetime.fromtimestamp(unix, UTC)


def _state(row: Any) -> AlertState:
    if row.resolved_at is not None:
        return "resolved"
    return "acknowledged" if row.acknowledged_at is not None else "open"


def _delivery(row: Any) -> dict[str, Any]:
    return {"event": row.event, "channel": row.channel, "state": row.state,
            "attempts": row.attempts, "last_error": row.last_error,
            "last_attempt_at": iso(row.last_attempt_at),
            "next_attempt_at": iso(row.next_attempt_at), "delivered_at": iso(row.delivered_at)}


def _alert(row: Any, deliveries: list[dict[str, Any]]) -> dict[str, Any]:
    """An alert's JSON-ready shape (the documented body of GET /v1/alerts/<id>)."""
    resolution = row.resolution
    return {
        "id": row.id,
        "line": row.line,
        "camera": row.camera,
        "rate_kind": row.rate_kind,
        "test": row.test,
        "state": _state(row),
        "rate": row.rate,
        "baseline": row.baseline,
        "limit": row.limit_rate,
        "window": row.window_images,
        "events": row.events,
        "job_ids": row.job_ids,
        "opened_at": iso(row.opened_at),
        "resolved_at": iso(row.resolved_at),
        "resolution": None if resolution is None else {
            key: resolution.get(key)
            for key in ("reason", "rate", "baseline", "limit", "window", "events")},
        "acknowledged_at": iso(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
        "ack_note": row.ack_note,
        "deliveries": deliveries,
    }


@dataclass
class AlertPage:
    alerts: list[dict[str, Any]]
    next_cursor: str | None


class AlertIndex:
    """The alert queries, on the results index's connection pool (its ``_run`` and
    ``_transaction`` helpers: the same retry on a dead pooled connection, the same
    :class:`IndexUnavailable` while the database is down)."""

    def __init__(self, index: ResultsIndex) -> None:
        self._index = index

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert(table) if self._index.postgres else sqlite.insert(table))

    # --- writes ---

    def record_event(self, event: AlertEvent) -> None:
        """Write an alert's opening or resolution, and a pending delivery per channel of the
        event (an existing delivery is left as it is). Idempotent, in any order."""
        opened = event.opened
        values: dict[str, Any] = {
            "id": event.id, "tenant": event.tenant, "line": opened["line"],
            "camera": opened.get("camera"), "stream": opened["stream"],
            "monitor_alert_id": opened["alert_id"], "rate_kind": opened["rate_kind"],
            "test": opened["test"], "rate": opened["rate"], "baseline": opened["baseline"],
            "limit_rate": opened["limit"], "window_images": opened["window"],
            "events": opened["events"], "job_ids": list(opened.get("job_ids", [])),
            "opened_at": _stamp(opened["opened_at"]),
        }
        if event.resolved is not None:
            values.update(resolved_at=_stamp(event.resolved["at"]), resolution=event.resolved)
        insert = self._insert(alerts).values(**values)
        c = alerts.c
        upsert = insert.on_conflict_do_update(
            index_elements=[c.id],
            set_={"resolved_at": sa.func.coalesce(c.resolved_at, insert.excluded.resolved_at),
                  "resolution": sa.func.coalesce(c.resolution, insert.excluded.resolution)})
        pending = [{"alert_id": event.id, "event": event.event, "channel": channel,
                    "tenant": event.tenant, "state": "pending", "attempts": 0}
                   for channel in event.channels]
        with self._index._transaction() as conn:
            conn.execute(upsert)
            if pending:
                conn.execute(self._insert(alert_deliveries).on_conflict_do_nothing(), pending)

    def record_delivery(self, tenant: str, alert_id: str, event: str, channel: str, *,
                        state: DeliveryState, attempts: int, last_error: str | None = None,
                        attempted_at: float | None = None, next_attempt_at: float | None = None,
                        delivered_at: float | None = None) -> None:
        """Set one channel's delivery of one event. A delivered one stays delivered; the
        last error stays after a later success."""
        values = {"alert_id": alert_id, "event": event, "channel": channel, "tenant": tenant,
                  "state": state, "attempts": attempts, "last_error": last_error,
                  "last_attempt_at": _stamp(attempted_at),
                  "next_attempt_at": _stamp(next_attempt_at),
                  "delivered_at": _stamp(delivered_at)}
        insert = self._insert(alert_deliveries).values(**values)
        d = alert_deliveries.c
        update: dict[str, Any] = {name: insert.excluded[name] for name in (
            "state", "attempts", "next_attempt_at", "delivered_at")}
        for kept in ("last_error", "last_attempt_at"):  # history: set, never cleared
            update[kept] = sa.func.coalesce(insert.excluded[kept], d[kept])
        statement = insert.on_conflict_do_update(
            index_elements=[d.alert_id, d.event, d.channel], set_=update,
            where=d.state != "delivered")
        self._index._run(lambda conn: conn.execute(statement))

    def acknowledge(self, tenant: str, alert_id: str, by: str | None, note: str | None,
                    at: float) -> dict[str, Any] | None:
        """Mark the alert as seen by a person (the first acknowledgement stays); the alert,
        or None when the tenant has none by that id."""
        c = alerts.c
        with self._index._transaction() as conn:
            conn.execute(sa.update(alerts)
                         .where(c.tenant == tenant, c.id == alert_id,
                                c.acknowledged_at.is_(None))
                         .values(acknowledged_at=_stamp(at), acknowledged_by=by, ack_note=note))
        return self.get(tenant, alert_id)

    # --- reads ---

    def get(self, tenant: str, alert_id: str) -> dict[str, Any] | None:
        c = alerts.c
        statement = sa.select(alerts).where(c.tenant == tenant, c.id == alert_id)
        row = self._index._run(lambda conn: conn.execute(statement).first())
        if row is None:
            return None
        return _alert(row, self._deliveries([alert_id]).get(alert_id, []))

    def event(self, alert_id: str, event: str) -> AlertEvent | None:
        """An event rebuilt from the stored record (when Redis lost the event's own copy);
        None when the alert, or that event of it, is not recorded."""
        statement = sa.select(alerts).where(alerts.c.id == alert_id)
        row = self._index._run(lambda conn: conn.execute(statement).first())
        if row is None or (event == "resolved" and row.resolution is None):
            return None
        opened = {
            "kind": "opened", "alert_id": row.monitor_alert_id, "stream": row.stream,
            "line": row.line, "camera": row.camera, "rate_kind": row.rate_kind,
            "test": row.test, "rate": row.rate, "baseline": row.baseline,
            "limit": row.limit_rate, "window": row.window_images, "events": row.events,
            "job_ids": list(row.job_ids), "at": row.opened_at.timestamp(),
            "opened_at": row.opened_at.timestamp(), "acknowledged": False, "reason": ""}
        transition_from(opened)  # the rebuilt opening must be a valid Transition
        return AlertEvent(tenant=row.tenant, id=row.id, event=event,  # type: ignore[arg-type]
                          opened=opened, resolved=row.resolution)

    def acknowledged(self, alert_id: str) -> bool:
        statement = sa.select(alerts.c.acknowledged_at).where(alerts.c.id == alert_id)
        return self._index._run(lambda conn: conn.execute(statement).scalar()) is not None

    def delivery(self, alert_id: str, event: str, channel: str) -> dict[str, Any] | None:
        d = alert_deliveries.c
        statement = sa.select(alert_deliveries).where(
            d.alert_id == alert_id, d.event == event, d.channel == channel)
        row = self._index._run(lambda conn: conn.execute(statement).first())
        return None if row is None else _delivery(row)

    def _deliveries(self, alert_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        d = alert_deliveries.c
        statement = (sa.select(alert_deliveries).where(d.alert_id.in_(alert_ids))
                     .order_by(d.alert_id, d.event.desc(), d.channel))
        found: dict[str, list[dict[str, Any]]] = {}
        for row in self._index._run(lambda conn: conn.execute(statement).all()):
            found.setdefault(row.alert_id, []).append(_delivery(row))
        return found

    def list(self, tenant: str, *, line: str | None = None, state: AlertState | None = None,
             limit: int = 50, cursor: str | None = None) -> AlertPage:
        """The tenant's alerts, newest opening first, by keyset pages (``next_cursor``);
        ValueError for a malformed cursor or a limit outside 1..MAX_PAGE."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}")
        c = alerts.c
        where: list[sa.ColumnElement[bool]] = [c.tenant == tenant]
        if line is not None:
            where.append(c.line == line)
        if state == "resolved":
            where.append(c.resolved_at.isnot(None))
        elif state == "acknowledged":
            where += [c.resolved_at.is_(None), c.acknowledged_at.isnot(None)]
        elif state == "open":
            where += [c.resolved_at.is_(None), c.acknowledged_at.is_(None)]
        if cursor is not None:
            opened_at, alert_id = decode_cursor(cursor)
            where.append(sa.and_(c.opened_at <= opened_at,
                                 sa.or_(c.opened_at < opened_at, c.id < alert_id)))
        statement = (sa.select(alerts).where(*where)
                     .order_by(c.opened_at.desc(), c.id.desc()).limit(limit + 1))
        rows = self._index._run(lambda conn: conn.execute(statement).all())
        more = len(rows) > limit
        rows = rows[:limit]
        deliveries = self._deliveries([row.id for row in rows]) if rows else {}
        return AlertPage(
            alerts=[_alert(row, deliveries.get(row.id, [])) for row in rows],
            next_cursor=encode_cursor(rows[-1].opened_at, rows[-1].id) if more else None)

    # --- line configuration ---

    def line_config(self, tenant: str, line: str) -> LineAlerting:
        """The line's stored overrides (none stored: all defaults)."""
        la = line_alerting.c
        statement = sa.select(la.config).where(la.tenant == tenant, la.line == line)
        stored = self._index._run(lambda conn: conn.execute(statement).scalar())
        return LineAlerting.model_validate(stored or {})

    def put_line_config(self, tenant: str, line: str, config: LineAlerting) -> None:
        insert = self._insert(line_alerting).values(
            tenant=tenant, line=line, config=config.overrides(), updated_at=datetime.now(UTC))
        la = line_alerting.c
        statement = insert.on_conflict_do_update(
            index_elements=[la.tenant, la.line],
            set_={"config": insert.excluded.config, "updated_at": insert.excluded.updated_at})
        self._index._run(lambda conn: conn.execute(statement))


class LineAlertingStore:
    """Each line's alerting overrides: the index holds them, Redis a copy the workers read
    (one GET per image; a miss reads the index once and refills the copy)."""

    def __init__(self, index: AlertIndex, redis_client: redis.Redis) -> None:
        self._index = index
        self._redis = redis_client

    def get(self, tenant: str, line: str) -> LineAlerting:
        """The line's overrides; all defaults while the index is unreachable and Redis has
        no copy (not cached, so the real ones are read once it is back)."""
        key = keyspace.line_alerting(tenant, line)
        cached = self._redis.get(key)
        if cached is not None:
            try:
                return LineAlerting.model_validate(json.loads(cached))
            except ValueError:
                pass  # a copy from an older version: read the index again
        try:
            config = self._index.line_config(tenant, line)
        except IndexUnavailable:
            return LineAlerting()
        self._redis.set(key, json.dumps(config.overrides()), ex=CONFIG_CACHE_TTL_S)
        return config

    def put(self, tenant: str, line: str, config: LineAlerting) -> None:
        """Store the overrides (the index first: IndexUnavailable changes nothing)."""
        self._index.put_line_config(tenant, line, config)
        self._redis.set(keyspace.line_alerting(tenant, line), json.dumps(config.overrides()),
                        ex=CONFIG_CACHE_TTL_S)
