"""Stage 9: line health. Every job that ends, done or failed, feeds the statistical monitors
of its line (:mod:`inspectq.linehealth`): per line, and per (line, camera) when the line is so
configured, the REJECT, REVIEW and failure rates. An alert that opens or resolves becomes an
*alert event* that the notify queue writes to the results index and sends; nothing is sent
from here, and nothing here can fail or hold up a job (the caller logs what raises).

State lives in Redis (keys in :mod:`inspectq.keyspace`), shared by every worker process:

* ``linehealth_state(tenant, stream)``: each stream's monitor state (a few hundred bytes of
  JSON, the stream's open alert included), 30 days after its last image;
* ``linehealth_counted(job)``: written in the same transaction as the states, so a
  redelivered job counts once;
* ``alert_event(alert, event)`` and the ``ALERT_OUTBOX`` entry of a new event, written in
  that transaction too, so an alert that opens is never lost between the monitor and the
  queue (``workers.alert_delivery`` sweeps the outbox).

Read-observe-write of a job's streams is one optimistic transaction: WATCH the states and
the job's counted marker, read them (one MGET), observe, then MULTI/EXEC the new states; a
concurrent writer of the same line makes EXEC fail and the job is observed again on the
fresh states, after a random pause of up to 2 ms. A process that lost three times takes the
line's *turn* (``linehealth_turn``, a short-lived key every transaction watches): the
others wait until it has committed, so a busy line never starves one worker. Three round
trips per job, whatever the number of streams. A state that is
missing (a Redis flush, a new line) or unreadable starts learning again; it never raises.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import time

import redis
from celery import Celery

from inspectq import keyspace
from inspectq.alerting import AlertEvent, EffectiveAlerting, effective
from inspectq.config import Settings
from inspectq.index import ResultsIndex
from inspectq.index.alerts import AlertIndex, LineAlertingStore
from inspectq.jobs import JobRecord, Status
from inspectq.linehealth import (
    AlertState,
    LineHealthMonitor,
    MonitorConfig,
    RateKind,
    StreamKey,
    Transition,
    events_for,
    stream_keys,
)
from inspectq.queue import enqueue_alert_event, make_celery

log = logging.getLogger(__name__)

#: A stream's state is dropped after this long without an image (the line is gone; were it
#: to come back, it learns again).
STATE_TTL_S = 30 * 24 * 3600
#: The counted marker outlives any redelivery of the job.
COUNTED_TTL_S = 7 * 24 * 3600
#: An event stays in Redis this long at least (longer than any notification is retried).
EVENT_TTL_S = 8 * 24 * 3600
#: The outbox hands an event on again when its message has not taken it by then.
OUTBOX_GRACE_S = 120.0
#: How long a worker process reuses a line's configuration before reading it again.
CONFIG_REUSE_S = 5.0
#: After this many lost transactions a process takes the line's turn: the others wait while
#: it commits (without it, one process can lose to a busier one indefinitely).
TURN_AFTER = 3
#: A turn left by a process that died expires after this long.
TURN_TTL_MS = 500
#: How long a job may wait for its line before it is left uncounted (and logged).
MAX_WAIT_S = 1.0
#: The longest random pause after a lost transaction (about one transaction's length).
CONFLICT_BACKOFF_S = 0.002


def event_ttl_s(settings: Settings) -> int:
    return max(EVENT_TTL_S, int(settings.alert_retry_hours * 3600 * 2))


def _opening(resolved: Transition, alert: AlertState | None) -> Transition:
    """The opening transition of the alert ``resolved`` closes, from the monitor's state
    of the alert before it resolved."""
    opening = dataclasses.replace(resolved, kind="opened", at=resolved.opened_at, reason="",
                                  acknowledged=False)
    if alert is None:
        return opening
    return dataclasses.replace(opening, rate=alert.rate, baseline=alert.baseline,
                               limit=alert.limit, window=alert.window, events=alert.events,
                               job_ids=tuple(alert.job_ids))


class LineHealth:
    """The monitors of every line, over Redis; one per worker process."""

    def __init__(self, settings: Settings, redis_client: redis.Redis,
                 index: ResultsIndex) -> None:
        self._settings = settings
        self._redis = redis_client
        self._configs = LineAlertingStore(AlertIndex(index), redis_client)
        self._setups: dict[tuple[str, str], tuple[float, EffectiveAlerting, MonitorConfig]] = {}
        self._sender: Celery | None = None

    def setup(self, tenant: str, line: str, now: float) -> tuple[EffectiveAlerting,
                                                                 MonitorConfig]:
        """The line's configuration, read again every CONFIG_REUSE_S seconds at most."""
        known = self._setups.get((tenant, line))
        if known is not None and now - known[0] < CONFIG_REUSE_S:
            return known[1], known[2]
        alerting = effective(self._settings, self._configs.get(tenant, line))
        config = alerting.monitor_config()
        self._setups[(tenant, line)] = (now, alerting, config)
        return alerting, config

    def observe(self, record: JobRecord, now: float | None = None) -> list[AlertEvent]:
        """Feed a job that ended into its line's streams, once per job however often it is
        delivered; the alert events it caused, already stored and handed to the notify
        queue."""
        if not record.status.terminal:
            return []
        now = time.time() if now is None else now
        alerting, config = self.setup(record.tenant, record.line, now)
        decision = record.result.decision.value if record.result is not None else None
        outcome = events_for(decision, failed=record.status is Status.FAILED)
        streams = [key for key in stream_keys(config, record.line, record.camera)
                   if key.rate in outcome]
        if not streams:
            return []
        events = self._commit(record, streams, outcome, config, alerting, now)
        for event in events:
            self._hand_on(event)
        return events

    def _commit(self, record: JobRecord, streams: list[StreamKey],
                outcome: dict[RateKind, bool], config: MonitorConfig,
                alerting: EffectiveAlerting, now: float) -> list[AlertEvent]:
        """Observe the job on its streams in one optimistic transaction (see the module
        docstring), taking the line's turn after TURN_AFTER lost tries."""
        counted = keyspace.linehealth_counted(record.id)
        turn = keyspace.linehealth_turn(record.tenant, record.line)
        keys = [keyspace.linehealth_state(record.tenant, stream.name) for stream in streams]
        mine: bytes | None = None
        deadline = time.monotonic() + MAX_WAIT_S
        lost = 0
        try:
            with self._redis.pipeline() as pipe:
                while time.monotonic() < deadline:
                    if lost >= TURN_AFTER and mine is None:
                        token = secrets.token_hex(8).encode()
                        if self._redis.set(turn, token, nx=True, px=TURN_TTL_MS):
                            mine = token
                    try:
                        pipe.watch(counted, turn, *keys)
                        seen, holder, *states = pipe.mget([counted, turn, *keys])
                        if seen is not None:
                            return []  # a redelivered job: it fed its streams already
                        if holder is not None and holder != mine:
                            pipe.reset()  # another process has the turn: let it commit
                            time.sleep(random.uniform(0, CONFLICT_BACKOFF_S))
                            continue
                        pipe.multi()
                        events = self._stage(pipe, record, streams, outcome, config,
                                             alerting, states, now)
                        pipe.set(counted, b"1", ex=COUNTED_TTL_S)
                        if mine is not None:
                            pipe.delete(turn)
                        pipe.execute()
                        mine = None
                        return events
                    except redis.WatchError:
                        # A random pause: processes that start together would otherwise
                        # stay in step, and the same one would lose every time.
                        lost += 1
                        time.sleep(random.uniform(0, CONFLICT_BACKOFF_S))
        finally:
            if mine is not None and self._redis.get(turn) == mine:
                self._redis.delete(turn)
        log.warning("job %s: line %s busy; not counted after %.1f s", record.id, record.line,
                    MAX_WAIT_S)
        return []

    def _stage(self, pipe: redis.client.Pipeline, record: JobRecord, streams: list[StreamKey],
               outcome: dict[RateKind, bool], config: MonitorConfig,
               alerting: EffectiveAlerting, states: list[bytes | None],
               now: float) -> list[AlertEvent]:
        """Observe the job on each stream's state and queue the writes on ``pipe``: the new
        states, and each alert event with its outbox entry. The events."""
        ttl = event_ttl_s(self._settings)
        events: list[AlertEvent] = []
        for stream, state in zip(streams, states, strict=True):
            monitor = LineHealthMonitor.from_json(stream, config, state)
            alert = monitor.alert
            transition = monitor.observe(outcome[stream.rate], record.id, now)
            pipe.set(keyspace.linehealth_state(record.tenant, stream.name), monitor.to_json(),
                     ex=STATE_TTL_S)
            if transition is None:
                continue
            opening = transition if transition.kind == "opened" else _opening(transition, alert)
            event = AlertEvent.of(record.tenant, transition, opening, alerting.channels)
            pipe.set(keyspace.alert_event(event.id, event.event), event.model_dump_json(),
                     ex=ttl)
            pipe.zadd(keyspace.ALERT_OUTBOX, {
                keyspace.alert_outbox_member(event.id, event.event): now + OUTBOX_GRACE_S})
            events.append(event)
        return events

    def _hand_on(self, event: AlertEvent) -> None:
        """Queue the event (a failure here is caught up by the outbox sweep)."""
        transition = event.transition
        log.warning("alert %s %s (tenant %s): %s", event.id, event.event, event.tenant,
                    transition.text)
        if self._sender is None:
            self._sender = make_celery(self._settings)
        try:
            enqueue_alert_event(self._sender, event.id, event.event)
        except Exception:
            log.exception("alert %s: could not queue the %s event; the outbox sweep will",
                          event.id, event.event)
