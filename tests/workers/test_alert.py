"""Defect-rate alerts: real Redis, a real SMTP server (aiosmtpd) and a local HTTP server
standing in for Slack's webhook endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message
from pydantic import SecretStr

from devstack.ports import free_port
from inspectq.config import Settings
from inspectq.result import Decision
from tests.workers.conftest import png, strip_with_scratch, submit
from workers.alert import DefectRateMonitor, notify
from workers.services import Services, build_services
from workers.tasks import inspect_job


class Inbox(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list = []

    def handle_message(self, message) -> None:  # type: ignore[no-untyped-def]
        self.messages.append(message)


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    yield port, inbox
    controller.stop()


@pytest.fixture
def slack() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP server that records what a Slack incoming webhook would receive."""
    posts: list[dict] = []

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            posts.append({"path": self.path, "content_type": self.headers["Content-Type"],
                          "json": json.loads(self.rfile.read(length))})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/x", posts
    server.shutdown()


@pytest.fixture
def alert_settings(settings: Settings, smtp: tuple[int, Inbox],
                   slack: tuple[str, list[dict]]) -> Settings:
    return settings.model_copy(update={
        "alert_window_s": 60, "alert_min_images": 4, "alert_defect_rate": 0.5,
        "alert_cooldown_s": 600, "slack_webhook_url": SecretStr(slack[0]), "smtp_host": "127.0.0.1",
        "smtp_port": smtp[0], "alert_email_to": "qa@factory.example",
    })


def _observe_all(settings: Settings, client: redis.Redis, decisions: list[Decision],
                 line: str = "line-7") -> list:
    monitor = DefectRateMonitor(settings, client)
    alerts = []
    for number, decision in enumerate(decisions):
        alert = monitor.observe(line, f"job-{number}", decision, time.time())
        if alert is not None:
            notify(settings, alert)
            alerts.append(alert)
    return alerts


def test_spike_alerts_slack_and_email_once_per_cooldown(
    alert_settings: Settings, redis_client: redis.Redis, smtp: tuple[int, Inbox],
    slack: tuple[str, list[dict]],
) -> None:
    R, P = Decision.REJECT, Decision.PASS
    alerts = _observe_all(alert_settings, redis_client, [R, P, R, R, R, R])
    assert len(alerts) == 1  # at the 4th image (3 of 4 > 50%); then the cooldown holds
    assert (alerts[0].defective, alerts[0].seen) == (3, 4)
    [post] = slack[1]
    assert post["content_type"] == "application/json" and "line-7" in post["json"]["text"]
    [mail] = smtp[1].messages
    assert mail["To"] == "qa@factory.example" and "line-7" in mail["Subject"]
    assert redis_client.ttl("inspectq:alert:line-7:cooldown") > 500
    # No image data in the alert state: job ids and timestamps only.
    members = redis_client.zrange("inspectq:alert:line-7:seen", 0, -1)
    assert members == [f"job-{n}".encode() for n in range(6)]


def test_rate_below_threshold_or_too_few_images_stays_quiet(
    alert_settings: Settings, redis_client: redis.Redis, slack: tuple[str, list[dict]]
) -> None:
    R, P, V = Decision.REJECT, Decision.PASS, Decision.REVIEW
    assert _observe_all(alert_settings, redis_client, [R, R, R]) == []  # only 3 images
    assert _observe_all(alert_settings, redis_client, [R, P, P, V, V, P], line="l2") == []
    counting_review = alert_settings.model_copy(update={"alert_count_review": True})
    assert len(_observe_all(counting_review, redis_client, [R, P, V, V], line="l3")) == 1
    assert len(slack[1]) == 1


def test_a_redelivered_job_is_counted_once(
    alert_settings: Settings, redis_client: redis.Redis
) -> None:
    monitor = DefectRateMonitor(alert_settings, redis_client)
    for _ in range(5):
        assert monitor.observe("line-9", "same-job", Decision.REJECT, time.time()) is None
    assert redis_client.zcard("inspectq:alert:line-9:seen") == 1


def test_failing_channels_are_logged_never_raised(
    alert_settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    dead = alert_settings.model_copy(update={
        "slack_webhook_url": SecretStr(f"http://127.0.0.1:{free_port()}/hook"),
        "smtp_port": free_port(),
    })
    alerts = _observe_all(dead, redis_client, [Decision.REJECT] * 4)
    assert len(alerts) == 1
    assert "Slack alert for line line-7 failed" in caplog.text
    assert "email alert for line line-7 failed" in caplog.text


def test_the_task_feeds_the_monitor(
    alert_settings: Settings, services: Services, slack: tuple[str, list[dict]]
) -> None:
    alerting = build_services(alert_settings.model_copy(update={"alert_min_images": 2}))
    for seed in (31, 32):
        job_id = submit(services, png(strip_with_scratch(seed=seed)), line="strip-3")
        assert inspect_job(alerting, job_id).result.decision == "REJECT"
    [post] = slack[1]
    assert "strip-3" in post["json"]["text"] and "2 of 2" in post["json"]["text"]
