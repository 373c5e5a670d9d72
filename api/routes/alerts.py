"""Line health alerts: the history (from the results index), acknowledgements, and each
line's alerting configuration (stored in the index; the workers read a Redis copy that a
PUT replaces at once).

Every read and write is scoped to the caller's tenant. While the index's database is down
these routes answer 503 ``index_unavailable`` (alerts still open, are kept in Redis and are
sent; they appear here once the database is back).
"""

from __future__ import annotations

import json
import re
import time

from flask import Blueprint, Response, g, jsonify, request
from spectree import Response as Responses
from spectree import SpecTree

from api.errors import ApiError
from api.schemas import (
    NAME_PATTERN,
    AckIn,
    AlertListQuery,
    AlertOut,
    AlertPageOut,
    ErrorOut,
    LineAlertingIn,
    LineAlertingOut,
    LineHealthOut,
)
from api.services import Services, services
from inspectq import keyspace
from inspectq.alerting import (
    LineAlerting,
    check_line,
    describe,
    effective,
    is_alert_id,
)
from inspectq.index.alerts import AlertIndex, LineAlertingStore
from inspectq.index.results import decode_cursor
from inspectq.linehealth import LineHealthMonitor, stream_keys

SECURITY = {"bearer": []}
_ERRORS = {"HTTP_401": ErrorOut, "HTTP_429": ErrorOut, "HTTP_503": ErrorOut}
#: How long the Redis copy of an acknowledgement lives (the index keeps it for good).
ACK_MIRROR_TTL_S = 30 * 24 * 3600
_LINE = re.compile(NAME_PATTERN)


def _alerts(svc: Services) -> AlertIndex:
    return AlertIndex(svc.index)


def _no_alert(alert_id: str) -> ApiError:
    return ApiError(404, "alert_not_found", f"No alert {alert_id!r} for this API key.")


def _check_line(line: str) -> None:
    if not _LINE.fullmatch(line):
        raise ApiError(404, "line_not_found", f"No line can be named {line!r}: names match "
                       f"{NAME_PATTERN}.")


def add_alert_routes(bp: Blueprint, spec: SpecTree) -> None:
    @bp.get("/alerts")
    @spec.validate(query=AlertListQuery,
                   resp=Responses(HTTP_200=AlertPageOut, HTTP_400=ErrorOut, **_ERRORS),
                   tags=["alerts"], security=SECURITY)
    def list_alerts() -> Response:
        """The caller's line-health alerts, newest opening first, optionally of one line and
        in one state; keyset pagination: pass `next_cursor` back as `cursor`."""
        query: AlertListQuery = request.context.query
        if query.cursor is not None:
            try:
                _, last_id = decode_cursor(query.cursor)
            except ValueError as error:
                raise ApiError(400, "invalid_cursor", str(error)) from error
            if not is_alert_id(last_id):
                raise ApiError(400, "invalid_cursor", "malformed cursor")
        page = _alerts(services()).list(g.tenant, line=query.line, state=query.state,
                                        limit=query.limit, cursor=query.cursor)
        return jsonify({"alerts": page.alerts, "next_cursor": page.next_cursor})

    @bp.get("/alerts/<alert_id>")
    @spec.validate(resp=Responses(HTTP_200=AlertOut, HTTP_404=ErrorOut, **_ERRORS),
                   tags=["alerts"], security=SECURITY)
    def get_alert(alert_id: str) -> Response:
        """One alert: what tripped (line, camera, rate, test), the rate, baseline, limit and
        window at its opening, a few offending jobs, its resolution, acknowledgement, and
        each channel's delivery (attempts, last error, delivered_at)."""
        found = _alerts(services()).get(g.tenant, alert_id) if is_alert_id(alert_id) else None
        if found is None:
            raise _no_alert(alert_id)
        return jsonify(found)

    @bp.post("/alerts/<alert_id>/ack")
    @spec.validate(json=AckIn, resp=Responses(HTTP_200=AlertOut, HTTP_400=ErrorOut,
                                              HTTP_404=ErrorOut, **_ERRORS),
                   tags=["alerts"], security=SECURITY)
    def acknowledge(alert_id: str) -> Response:
        """A person has seen the alert. It stays open until the rate recovers (the recovery
        message says it was acknowledged). The first acknowledgement is kept; acknowledging
        again answers the alert as it is."""
        body: AckIn = request.context.json
        svc = services()
        now = time.time()
        found = (_alerts(svc).acknowledge(g.tenant, alert_id, body.by, body.note, now)
                 if is_alert_id(alert_id) else None)
        if found is None:
            raise _no_alert(alert_id)
        svc.redis.set(keyspace.alert_acked(alert_id),
                      json.dumps({"at": found["acknowledged_at"], "by": found["acknowledged_by"]}),
                      ex=ACK_MIRROR_TTL_S)
        return jsonify(found)

    @bp.get("/lines/<line>/alerting")
    @spec.validate(resp=Responses(HTTP_200=LineAlertingOut, HTTP_404=ErrorOut, **_ERRORS),
                   tags=["alerts"], security=SECURITY)
    def get_line_alerting(line: str) -> Response:
        """A line's alerting: its overrides, the configuration in effect (overrides over
        the global defaults) and the channels this deployment has."""
        _check_line(line)
        svc = services()
        return jsonify(describe(svc.settings, line, _alerts(svc).line_config(g.tenant, line)))

    @bp.get("/lines/<line>/health")
    @spec.validate(resp=Responses(HTTP_200=LineHealthOut, HTTP_404=ErrorOut, **_ERRORS),
                   tags=["alerts"], security=SECURITY)
    def get_line_health(line: str) -> Response:
        """The line's health monitors as they stand now, one per monitored rate (the line's
        own streams; per-camera ones are left out): baseline, the spike test's control
        limit and current window, the CUSUM against its decision interval, whether an
        alert is open. A line the workers have not seen yet shows a monitor at its start."""
        _check_line(line)
        svc = services()
        config = effective(svc.settings, _alerts(svc).line_config(g.tenant, line)
                           ).monitor_config()
        streams = stream_keys(config, line, None)
        states = svc.redis.mget([keyspace.linehealth_state(g.tenant, stream.name)
                                 for stream in streams])
        return jsonify({"line": line, "streams": [
            LineHealthMonitor.from_json(stream, config, state).health()
            for stream, state in zip(streams, states, strict=True)]})

    @bp.put("/lines/<line>/alerting")
    @spec.validate(json=LineAlertingIn, resp=Responses(HTTP_200=LineAlertingOut,
                                                       HTTP_400=ErrorOut, HTTP_404=ErrorOut,
                                                       **_ERRORS),
                   tags=["alerts"], security=SECURITY)
    def put_line_alerting(line: str) -> Response:
        """Replace a line's overrides: which rates, sensitivity (false_alarms_per_week),
        per-camera monitors, the image rate, warm-up, recovery, prior rates, channels (a
        subset of the configured ones) and quiet hours (UTC; alerts still open and are
        recorded, notifications wait until they end). The workers use it within seconds."""
        _check_line(line)
        svc = services()
        config = LineAlerting.model_validate(request.context.json.model_dump())
        try:
            check_line(svc.settings, config)
        except ValueError as error:
            raise ApiError(400, "invalid_alerting", str(error)) from error
        LineAlertingStore(_alerts(svc), svc.redis).put(g.tenant, line, config)
        return jsonify(describe(svc.settings, line, config))
