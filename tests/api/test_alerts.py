"""Line health alerts through the API: the history (list, filters, pages, one alert),
acknowledgements, tenant isolation, and each line's alerting configuration, on the real
results index (PostgreSQL) and Redis.

Alerts are made as in production: the real monitor (:mod:`inspectq.linehealth`) driven from
healthy into a spike and back, its transitions written by the index's own
:meth:`AlertIndex.record_event` (what the notify queue's task calls).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr
from sqlalchemy import make_url

from api.apikeys import add_key
from inspectq import keyspace
from inspectq.alerting import AlertEvent, LineAlerting, effective
from inspectq.index.alerts import AlertIndex
from inspectq.linehealth import LineHealthMonitor, MonitorConfig, StreamKey, Transition
from tests.api.conftest import AUTH, closed_port_url, services_of

#: The monitor of a line configured to learn fast (warm-up 40, prior 10 %).
FAST = MonitorConfig(rates=("reject",), warmup_images=40, learn_block_images=10,
                     recovery_images=10, min_images=20, prior_rates={"reject": 0.1})


@pytest.fixture(autouse=True)
def _no_alerts(database_url: str) -> None:
    url = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("TRUNCATE alerts, alert_deliveries, line_alerting")


def spike(line: str, start: float, camera: str | None = None) -> tuple[Transition, Transition]:
    """The opening and the resolution of one alert of ``line``'s REJECT rate: 40 healthy
    images (10 % REJECT), REJECTs until it opens, PASSes until it resolves."""
    monitor = LineHealthMonitor(StreamKey(line, "reject", camera), FAST)
    found: list[Transition] = []
    decisions = [i % 10 == 0 for i in range(40)] + [True] * 40 + [False] * 400
    for number, is_reject in enumerate(decisions):
        transition = monitor.observe(is_reject, f"j_{line}{number:020d}"[:24], start + number)
        if transition is not None:
            found.append(transition)
            if transition.kind == "resolved":
                break
    opened, resolved = found
    return opened, resolved


def record(app: Flask, tenant: str, line: str, start: float, *, resolve: bool = False,
           camera: str | None = None) -> str:
    """An alert of ``tenant`` in the index (open, or resolved); its id."""
    opened, resolved = spike(line, start, camera)
    alerts = AlertIndex(services_of(app).index)
    event = AlertEvent.of(tenant, opened, opened, ["slack"])
    alerts.record_event(event)
    if resolve:
        alerts.record_event(AlertEvent.of(tenant, resolved, opened, ["slack"]))
    return event.id


def other_tenant(app: Flask) -> dict[str, str]:
    key, _ = add_key(Path(services_of(app).settings.api_keys_file), "acme")
    return {"Authorization": f"Bearer {key}"}


def ids(client: FlaskClient, query: str = "", headers: dict[str, str] = AUTH) -> list[str]:
    response = client.get(f"/v1/alerts{query}", headers=headers)
    assert response.status_code == 200, response.json
    return [alert["id"] for alert in response.json["alerts"]]


def test_history_lists_filters_pages_and_acknowledges(app: Flask, client: FlaskClient) -> None:
    now = time.time()
    resolved = record(app, "default", "L1", now - 3000, resolve=True)
    open_l2 = record(app, "default", "L2", now - 2000)
    open_l1 = record(app, "default", "L1", now - 1000, camera="cam-2")
    assert ids(client) == [open_l1, open_l2, resolved]  # newest opening first
    assert ids(client, "?line=L1") == [open_l1, resolved]
    assert ids(client, "?state=resolved") == [resolved]
    assert ids(client, "?state=open") == [open_l1, open_l2]

    acked = client.post(f"/v1/alerts/{open_l1}/ack", json={"by": "ana", "note": "cam-2 lens"},
                        headers=AUTH)
    assert acked.status_code == 200, acked.json
    body = acked.json
    assert (body["state"], body["acknowledged_by"], body["ack_note"]) == (
        "acknowledged", "ana", "cam-2 lens")
    assert body["camera"] == "cam-2" and body["acknowledged_at"]
    mirror = json.loads(services_of(app).redis.get(keyspace.alert_acked(open_l1)))
    assert mirror == {"at": body["acknowledged_at"], "by": "ana"}
    again = client.post(f"/v1/alerts/{open_l1}/ack", json={"by": "bo"}, headers=AUTH)
    assert again.status_code == 200 and again.json["acknowledged_by"] == "ana"  # first stays
    assert ids(client, "?state=open") == [open_l2]
    assert ids(client, "?state=acknowledged") == [open_l1]

    one = client.get(f"/v1/alerts/{resolved}", headers=AUTH).json
    opened, closed = spike("L1", now - 3000)
    assert (one["state"], one["line"], one["rate_kind"], one["test"]) == (
        "resolved", "L1", "reject", opened.test)
    assert (one["rate"], one["baseline"], one["limit"], one["window"], one["events"]) == (
        opened.rate, opened.baseline, opened.limit, opened.window, opened.events)
    assert one["job_ids"] == list(opened.job_ids) and len(one["job_ids"]) == 5
    assert one["resolution"] == {"reason": "recovered", "rate": closed.rate,
                                 "baseline": closed.baseline, "limit": closed.limit,
                                 "window": closed.window, "events": closed.events}
    assert one["deliveries"] == [{
        "event": "resolved", "channel": "slack", "state": "pending", "attempts": 0,
        "last_error": None, "last_attempt_at": None, "next_attempt_at": None,
        "delivered_at": None}, {
        "event": "opened", "channel": "slack", "state": "pending", "attempts": 0,
        "last_error": None, "last_attempt_at": None, "next_attempt_at": None,
        "delivered_at": None}]

    seen, cursor = [], None
    while True:
        page = client.get("/v1/alerts?limit=1" + (f"&cursor={cursor}" if cursor else ""),
                          headers=AUTH).json
        seen += [alert["id"] for alert in page["alerts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [open_l1, open_l2, resolved]


def test_a_tenant_sees_and_acknowledges_only_its_own_alerts(
        app: Flask, client: FlaskClient) -> None:
    ours = record(app, "default", "L1", time.time() - 100)
    theirs_headers = other_tenant(app)
    theirs = record(app, "acme", "L1", time.time())
    assert ids(client) == [ours]
    assert ids(client, headers=theirs_headers) == [theirs]
    for path in (f"/v1/alerts/{ours}",):
        assert client.get(path, headers=theirs_headers).status_code == 404
    refused = client.post(f"/v1/alerts/{ours}/ack", json={}, headers=theirs_headers)
    assert refused.status_code == 404 and refused.json["error"]["code"] == "alert_not_found"
    assert client.get(f"/v1/alerts/{ours}", headers=AUTH).json["acknowledged_at"] is None


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("get", "/v1/alerts?state=closed", None, 400, "invalid_request"),
    ("get", "/v1/alerts?limit=0", None, 400, "invalid_request"),
    ("get", "/v1/alerts?line=a%20b", None, 400, "invalid_request"),
    ("get", "/v1/alerts?cursor=not-a-cursor", None, 400, "invalid_cursor"),
    ("get", "/v1/alerts/al_000000000000000000000000", None, 404, "alert_not_found"),
    ("post", "/v1/alerts/al_000000000000000000000000/ack", {}, 404, "alert_not_found"),
    ("post", "/v1/alerts/al_000000000000000000000000/ack", {"who": "x"}, 400,
     "invalid_request"),
    ("post", "/v1/alerts/al_000000000000000000000000/ack", {"by": "a\x00b"}, 400,
     "invalid_request"),
    ("get", "/v1/lines/a%20b/alerting", None, 404, "line_not_found"),
    ("get", "/v1/lines/a%20b/health", None, 404, "line_not_found"),
])
def test_bad_requests_are_json_errors(client: FlaskClient, method: str, path: str,
                                      body: dict | None, status: int, code: str | None) -> None:
    response = getattr(client, method)(path, json=body, headers=AUTH)
    assert response.status_code == status, response.json
    assert response.is_json
    if code is not None:
        assert response.json["error"]["code"] == code


def test_line_alerting_round_trips_and_validates(make_app) -> None:
    app = make_app(slack_webhook_url=SecretStr("https://hooks.slack.example/services/x"))
    client = app.test_client()
    settings = services_of(app).settings
    default = client.get("/v1/lines/L7/alerting", headers=AUTH)
    assert default.status_code == 200
    assert default.json["config"] == {} and default.json["channels_available"] == ["slack"]
    assert default.json["effective"] == {
        "rates": list(settings.alert_rates), "per_camera": False,
        "false_alarms_per_week": settings.alert_false_alarms_per_week,
        "images_per_second": 1.0, "warmup_images": 2000, "recovery_images": 1000,
        "min_images": 100, "prior_rates": {"reject": 0.02, "review": 0.05, "failure": 0.005},
        "channels": ["slack"], "quiet_hours": None}

    wanted = {"rates": ["reject", "failure"], "false_alarms_per_week": 0.2,
              "per_camera": True, "warmup_images": 40, "prior_rates": {"reject": 0.05},
              "channels": ["slack"], "quiet_hours": {"start": "22:00", "end": "06:00"}}
    put = client.put("/v1/lines/L7/alerting", json=wanted, headers=AUTH)
    assert put.status_code == 200, put.json
    assert put.json["config"] == wanted
    effective = put.json["effective"]
    assert effective["rates"] == ["reject", "failure"] and effective["per_camera"] is True
    assert effective["prior_rates"] == {"reject": 0.05, "review": 0.05, "failure": 0.005}
    assert effective["recovery_images"] == 1000  # not overridden: the default
    assert client.get("/v1/lines/L7/alerting", headers=AUTH).json == put.json
    cached = services_of(app).redis.get(keyspace.line_alerting("default", "L7"))
    assert json.loads(cached) == wanted  # what the workers read, replaced at once
    # Another tenant's line of the same name is its own.
    assert client.get("/v1/lines/L7/alerting", headers=other_tenant(app)).json["config"] == {}

    replaced = client.put("/v1/lines/L7/alerting", json={"channels": []}, headers=AUTH)
    assert replaced.json["config"] == {"channels": []}
    assert replaced.json["effective"]["channels"] == []
    assert replaced.json["effective"]["quiet_hours"] is None

    for bad, code in [
        ({"channels": ["email"]}, "invalid_alerting"),  # not configured here
        ({"rates": ["scrap"]}, "invalid_request"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "invalid_request"),
        ({"quiet_hours": {"start": "25:00", "end": "06:00"}}, "invalid_request"),
        ({"prior_rates": {"reject": 1.5}}, "invalid_request"),
        ({"false_alarms_per_week": 0.001, "images_per_second": 1000}, "invalid_alerting"),
        ({"warmup": 10}, "invalid_request"),
    ]:
        response = client.put("/v1/lines/L7/alerting", json=bad, headers=AUTH)
        assert (response.status_code, response.json["error"]["code"]) == (400, code), bad
    assert client.get("/v1/lines/L7/alerting", headers=AUTH).json["config"] == {
        "channels": []}


def test_line_health_shows_the_workers_monitor_as_it_stands(app: Flask,
                                                           client: FlaskClient) -> None:
    """The monitor state the workers keep in Redis, read with the line's configuration."""
    overrides = {"rates": ["reject"], "warmup_images": 40, "recovery_images": 10,
                 "min_images": 20, "prior_rates": {"reject": 0.1}}
    assert client.put("/v1/lines/L8/alerting", json=overrides, headers=AUTH).status_code == 200
    fresh = client.get("/v1/lines/L8/health", headers=AUTH)
    assert fresh.status_code == 200, fresh.json
    [stream] = fresh.json["streams"]
    assert (stream["images"], stream["learning"], stream["baseline"]) == (0, True, 0.1)
    assert stream["window_rate"] is None and stream["alert_open"] is False

    config = effective(services_of(app).settings, LineAlerting(**overrides)).monitor_config()
    monitor = LineHealthMonitor(StreamKey("L8", "reject"), config)
    decisions = [i % 20 == 0 for i in range(400)] + [True] * 40  # 5 %, then a burst
    for number, is_reject in enumerate(decisions):
        monitor.observe(is_reject, f"j_{number:022d}", 1.0e9 + number)
    assert monitor.alert is not None
    services_of(app).redis.set(keyspace.linehealth_state("default", "L8/*/reject"),
                               monitor.to_json())
    [stream] = client.get("/v1/lines/L8/health", headers=AUTH).json["streams"]
    design = monitor.design  # the last 200 images: 8 of the 5 % and the 40 of the burst
    assert stream == {
        "rate_kind": "reject", "camera": None, "images": 440, "learning": False,
        "warmup_images": 40, "baseline": pytest.approx(monitor.baseline),
        "limit": pytest.approx(design.spike.ucl / design.spike.window), "window": 200,
        "window_images": 200, "window_rate": pytest.approx(48 / 200),
        "cusum": pytest.approx(monitor.cusum), "cusum_limit": pytest.approx(
            design.cusum.h_nats), "alert_open": True}
    assert 0.04 < stream["baseline"] < 0.08 and stream["window_rate"] > stream["limit"]
    # Another tenant's line of the same name is its own: unseen, with the default rates.
    other = client.get("/v1/lines/L8/health", headers=other_tenant(app)).json["streams"]
    assert [s["rate_kind"] for s in other] == ["reject", "review", "failure"]
    assert all(s["images"] == 0 and not s["alert_open"] for s in other)


def test_an_unreachable_index_is_a_503(make_app) -> None:
    down = make_app(database_url=closed_port_url("postgresql+psycopg") + "/x").test_client()
    for method, path, body in [("get", "/v1/alerts", None),
                               ("get", "/v1/alerts/al_000000000000000000000000", None),
                               ("post", "/v1/alerts/al_000000000000000000000000/ack", {}),
                               ("get", "/v1/lines/L1/alerting", None),
                               ("get", "/v1/lines/L1/health", None),
                               ("put", "/v1/lines/L1/alerting", {})]:
        response = getattr(down, method)(path, json=body, headers=AUTH)
        assert response.status_code == 503, path
        assert response.json["error"]["code"] == "index_unavailable"
