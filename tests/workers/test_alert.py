"""Line health in the workers (stage 9) and the notify queue, against real Redis (DB 11), the
real PostgreSQL (the results index), a real SMTP server (aiosmtpd), a local HTTP receiver
standing in for Slack, and real ``celery worker`` processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message
from pydantic import SecretStr
from sqlalchemy import make_url

from devstack.ports import free_port
from inspectq import keyspace
from inspectq.alerting import AlertEvent, LineAlerting, QuietHours
from inspectq.config import Settings
from inspectq.index import ResultsIndex
from inspectq.index.alerts import AlertIndex, LineAlertingStore
from inspectq.jobs import JobRecord
from inspectq.linehealth import LineHealthMonitor, MonitorConfig, MonitorState, StreamKey
from inspectq.queue import WORKER_QUEUES, make_celery
from inspectq.result import Decision
from tests.conftest import settings_env
from tests.index.conftest import make_record
from tests.receiver import Receiver
from tests.tcp_proxy import TcpProxy
from tests.workers.conftest import (
    CLOSED_PORT_URL,
    REDIS_URL,
    png,
    strip_with_scratch,
    submit,
    wait_for,
)
from workers.alert import LineHealth
from workers.alert_delivery import AlertDelivery
from workers.services import Services, build_services
from workers.tasks import inspect_job

TENANT = "default"
R, P, V = Decision.REJECT, Decision.PASS, Decision.REVIEW
#: A line that learns fast: 40 images of warm-up at a 10 % prior, REJECT rate only.
FAST = LineAlerting(rates=["reject"], warmup_images=40, recovery_images=10, min_images=20,
                    prior_rates={"reject": 0.1})
#: 40 healthy images (4 REJECT: a 10 % baseline), then REJECTs until the CUSUM trips.
HEALTHY = [R if i % 10 == 0 else P for i in range(40)]


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
def slack() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def alert_settings(database_url: str, smtp: tuple[int, Inbox], slack: Receiver) -> Settings:
    """Redis DB 11 and the workers' PostgreSQL; no Triton or S3 (nothing is inspected)."""
    return Settings(
        redis_url=REDIS_URL, database_url=database_url, triton_url=CLOSED_PORT_URL,
        public_url="https://inspectq.example", slack_webhook_url=SecretStr(slack.url),
        smtp_host="127.0.0.1", smtp_port=smtp[0], alert_email_to="qa@factory.example",
        alert_retry_base_s=0.2, alert_retry_max_s=5)


@pytest.fixture
def db(alert_settings: Settings) -> Iterator[redis.Redis]:
    """Redis DB 11 and the alert tables, empty before and after the test."""
    client = redis.Redis.from_url(alert_settings.redis_url)

    def empty() -> None:
        client.flushdb()
        url = make_url(alert_settings.database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False),
                             autocommit=True) as conn:
            conn.execute("TRUNCATE alerts, alert_deliveries, line_alerting")

    empty()
    yield client
    empty()


@pytest.fixture
def built(alert_settings: Settings, db: redis.Redis) -> Iterator[Services]:
    services = build_services(alert_settings)
    yield services
    services.index.close()


def configure(services: Services, line: str, config: LineAlerting) -> None:
    LineAlertingStore(AlertIndex(services.index), services.redis).put(TENANT, line, config)


def record(decision: Decision | None, line: str = "L1", camera: str | None = "cam-1",
           job_id: str | None = None) -> JobRecord:
    return make_record(tenant=TENANT, created_at=datetime.now(UTC), line=line, camera=camera,
                       decision=decision, job_id=job_id)


def drive(health: LineHealth, decisions: list[Decision | None], line: str = "L1",
          until: Callable[[AlertEvent], bool] | None = None) -> list[AlertEvent]:
    """Observe one job per decision (None: a failed job); stop after an event ``until``
    accepts."""
    events: list[AlertEvent] = []
    for decision in decisions:
        found = health.observe(record(decision, line))
        events += found
        if until is not None and any(until(event) for event in found):
            break
    return events


def state(client: redis.Redis, line: str, rate: str, camera: str | None = None
          ) -> MonitorState:
    raw = client.get(keyspace.linehealth_state(TENANT, f"{line}/{camera or '*'}/{rate}"))
    assert raw is not None
    return MonitorState.model_validate_json(raw)


def open_alert(services: Services, line: str = "L1") -> AlertEvent:
    """Drive ``line`` (configured FAST) from healthy into an alert; the opening event."""
    configure(services, line, FAST)
    health = LineHealth(services.settings, services.redis, services.index)
    events = drive(health, HEALTHY + [R] * 30, line, until=lambda e: e.event == "opened")
    assert [e.event for e in events] == ["opened"], events
    return events[0]


# --- the monitor through Redis --------------------------------------------------------------


def _observe_in_process(settings: Settings, records: list[JobRecord], start: object) -> None:
    health = LineHealth(settings, redis.Redis.from_url(settings.redis_url),
                        ResultsIndex(settings.database_url))
    start.wait()  # type: ignore[attr-defined]
    for job in records:
        health.observe(job)


def test_two_processes_at_once_count_each_job_once(built: Services, db: redis.Redis) -> None:
    """Two worker processes observe overlapping deliveries of 600 jobs of one line at the
    same time (300 jobs delivered to both): every stream counts each job exactly once, no
    update is lost to a concurrent writer and none counts twice."""
    decisions = [R if i % 7 == 0 else V if i % 11 == 0 else P for i in range(600)]
    records = [record(d) for d in decisions]
    records[5] = record(None)  # one failed job: the failure stream only
    # spawn, not fork: a forked copy of this test process inherits its threads' locks (the
    # Redis listeners, a browser driver of the dashboard tests) and can hang on one.
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_observe_in_process,
                               args=(built.settings, part, start))
               for part in (records[:450], records[150:])]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    decided = [r.result.decision for r in records if r.result is not None]
    reject = state(db, "L1", "reject")
    assert reject.images == len(decided) == 599
    assert reject.pending_events + reject.base_events == decided.count(R)
    review = state(db, "L1", "review")
    assert review.images == 599
    assert review.pending_events + review.base_events == decided.count(V)
    failure = state(db, "L1", "failure")
    assert failure.images == 600
    assert failure.pending_events + failure.base_events == 1  # the one failed job
    assert len(db.keys("inspectq:linehealth-counted:*")) == 600


def test_state_survives_a_new_monitor_object(built: Services, db: redis.Redis) -> None:
    """A worker restart: the baseline learned and the open alert live in Redis, so a new
    LineHealth (new process, new clients) carries on where the old one stopped, and the
    alert it opened resolves under the new one."""
    configure(built, "L1", FAST)
    first = LineHealth(built.settings, built.redis, built.index)
    [opened] = drive(first, HEALTHY + [R] * 30, until=lambda e: e.event == "opened")
    before = state(db, "L1", "reject")
    assert before.alert is not None and before.learned_images == 40

    second = LineHealth(built.settings, redis.Redis.from_url(built.settings.redis_url),
                        ResultsIndex(built.settings.database_url))
    events: list[AlertEvent] = []
    observed = 0
    while not events and observed < 200:
        events = second.observe(record(P))
        observed += 1
    assert [e.event for e in events] == ["resolved"]
    assert events[0].id == opened.id  # the same alert, opened by the first
    after = state(db, "L1", "reject")
    assert after.images == before.images + observed
    assert after.learned_images >= before.learned_images
    assert after.alert is None
    assert abs(events[0].transition.baseline - 0.1) < 1e-9  # the baseline the first learned
    # The resolution carries the opening's numbers, so either event alone makes the record.
    assert events[0].opened["rate"] == opened.opened["rate"]
    assert events[0].opened["job_ids"] == opened.opened["job_ids"]


@pytest.mark.parametrize("damage", ["garbled", "foreign", "flushed"])
def test_a_garbled_or_lost_state_learns_again_without_error(
        built: Services, db: redis.Redis, damage: str) -> None:
    configure(built, "L1", FAST)
    health = LineHealth(built.settings, built.redis, built.index)
    drive(health, HEALTHY + [R] * 30, until=lambda e: e.event == "opened")
    key = keyspace.linehealth_state(TENANT, "L1/*/reject")
    if damage == "garbled":
        db.set(key, b'{"version": 1, "stream": "L1/*/reject", "images": -4, "cusum": "x')
    elif damage == "foreign":
        db.set(key, LineHealthMonitor(StreamKey("L9", "reject"), MonitorConfig()).to_json())
    else:
        db.flushdb()
        configure(built, "L1", FAST)
    events = drive(health, [P] * 5)
    assert events == []
    fresh = state(db, "L1", "reject")
    assert fresh.images == 5 and fresh.alert is None and fresh.learned_images == 0
    # It learns again and alerts again on a real rise.
    events = drive(health, HEALTHY[5:] + [R] * 30, until=lambda e: e.event == "opened")
    assert [e.event for e in events] == ["opened"]


def test_the_inspect_task_feeds_its_line_once_per_job(services: Services) -> None:
    """Through the real stages: a REJECTed job feeds the line's three rates, a job that
    fails (not an image) only the failure rate, and a redelivery of a done job counts
    nothing more."""
    done = submit(services, png(strip_with_scratch(seed=41)), line="strip-9")
    assert inspect_job(services, done).result.decision == "REJECT"
    failed = submit(services, b"not an image at all", line="strip-9")
    assert inspect_job(services, failed).status == "failed"
    inspect_job(services, done)  # delivered again: found done
    client = services.redis
    assert state(client, "strip-9", "reject").images == 1
    assert state(client, "strip-9", "reject").pending_events == 1
    assert state(client, "strip-9", "review").images == 1
    failure = state(client, "strip-9", "failure")
    assert (failure.images, failure.pending_events) == (2, 1)


# --- the notify queue -----------------------------------------------------------------------


class NotifyWorker:
    """A real ``celery worker`` consuming both queues, as the stack runs it."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.main", "worker", "-Q",
             WORKER_QUEUES, "-O", "fair", "--concurrency", "2",
             "--pool", "prefork", "-l", "INFO", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"notify-{time.monotonic_ns()}@%h"],
            env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for(lambda: b"ready." in log_path.read_bytes() or self.process.poll() is not None,
                 30, "celery worker ready")
        assert self.process.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


def test_a_receiver_that_fails_twice_gets_the_alert_exactly_once(
        built: Services, slack: Receiver, smtp: tuple[int, Inbox], tmp_path: Path) -> None:
    """The opening goes through the notify queue of a real worker: Slack answers 500 twice,
    then takes it; it is sent three times, received once, and each channel's delivery is
    recorded on the alert (attempts, the last error, delivered_at)."""
    slack.fail_next = [500, 500]
    worker = NotifyWorker(built.settings, tmp_path / "worker.log")
    try:
        opened = open_alert(built)
        alerts = AlertIndex(built.index)

        def delivered() -> dict | None:
            found = alerts.get(TENANT, opened.id)
            states = {d["channel"]: d["state"] for d in (found or {}).get("deliveries", [])}
            return found if states == {"slack": "delivered", "email": "delivered"} else None

        found = wait_for(delivered, 60, "both deliveries recorded")
        time.sleep(2.0)  # any stray copy would have been sent by now
    finally:
        worker.stop()
    assert slack.attempts == 3 and len(slack.received) == 1, worker.log()
    payload = json.loads(slack.received[0].body)
    t = opened.transition
    assert payload["blocks"][0]["text"]["text"] == (
        f"REJECT rate alert on line L1: {t.rate:.1%} (baseline {t.baseline:.1%})")
    assert f"({t.events} of {t.window})" in json.dumps(payload)
    [mail] = smtp[1].messages
    assert mail["To"] == "qa@factory.example" and "REJECT rate alert on line L1" in mail["Subject"]
    assert found["state"] == "open" and found["rate"] == t.rate and found["window"] == t.window
    assert found["job_ids"] and found["job_ids"] == list(t.job_ids)
    slack_delivery = next(d for d in found["deliveries"] if d["channel"] == "slack")
    assert slack_delivery["attempts"] == 3 and slack_delivery["delivered_at"]
    assert "HTTP 500" in slack_delivery["last_error"]
    assert next(d for d in found["deliveries"] if d["channel"] == "email")["attempts"] == 1


def test_a_duplicated_message_never_sends_twice(built: Services, slack: Receiver) -> None:
    """Eight copies of one notification at once: one sends, each other finds it sending
    (busy, to look again later) or sent (duplicate). A late copy after Redis lost the sent
    marker finds the index's delivered row."""
    opened = open_alert(built)
    delivery = AlertDelivery(built, make_celery(built.settings))
    assert delivery.handle_event(opened.id, "opened") is None  # written to the index
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def copy() -> None:
        barrier.wait()
        outcomes.append(delivery.notify(opened.id, "opened", "slack").kind)

    threads = [threading.Thread(target=copy) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(slack.received) == 1 and slack.attempts == 1
    assert outcomes.count("delivered") == 1, outcomes
    assert set(outcomes) <= {"delivered", "busy", "duplicate"}, outcomes
    assert delivery.notify(opened.id, "opened", "slack").kind == "duplicate"
    built.redis.delete(keyspace.alert_sent(opened.id, "opened", "slack"))
    assert delivery.notify(opened.id, "opened", "slack").kind == "duplicate"
    assert len(slack.received) == 1 and slack.attempts == 1


def test_quiet_hours_defer_sending_not_the_alert(built: Services, slack: Receiver) -> None:
    opened = open_alert(built)
    now = datetime.now(UTC)
    quiet = QuietHours(start=(now - timedelta(hours=1)).strftime("%H:%M"),
                       end=(now + timedelta(hours=1)).strftime("%H:%M"))
    configure(built, "L1", FAST.model_copy(update={"quiet_hours": quiet}))
    delivery = AlertDelivery(built, make_celery(built.settings))
    assert delivery.handle_event(opened.id, "opened") is None
    outcome = delivery.notify(opened.id, "opened", "slack")
    assert outcome.kind == "deferred" and outcome.attempts == 0
    assert outcome.countdown == built.settings.alert_retry_max_s + 1  # hops of at most 5 s
    assert slack.attempts == 0
    alerts = AlertIndex(built.index)
    found = alerts.get(TENANT, opened.id)
    assert found is not None and found["state"] == "open"  # recorded all the same
    [waiting] = [d for d in found["deliveries"] if d["channel"] == "slack"]
    ends = quiet.until(time.time())
    assert waiting["state"] == "deferred" and ends is not None
    assert datetime.fromisoformat(waiting["next_attempt_at"]).timestamp() == pytest.approx(
        ends, abs=60)
    # Quiet hours over (or changed): the next hop sends.
    configure(built, "L1", FAST)
    assert delivery.notify(opened.id, "opened", "slack").kind == "delivered"
    assert len(slack.received) == 1


def test_with_the_database_down_the_alert_waits_in_redis_and_is_still_sent(
        built: Services, slack: Receiver) -> None:
    """The index is unreachable when an alert opens: nothing is lost. The event stays in
    Redis (outbox) and is retried; Slack is sent meanwhile and its delivery recorded once
    the database is back."""
    proxy = TcpProxy(("127.0.0.1", make_url(built.settings.database_url).port or 5432),
                     free_port())
    proxy.restore()
    through = make_url(built.settings.database_url).set(port=proxy.port)
    cut_off = build_services(built.settings.model_copy(update={
        "database_url": through.render_as_string(hide_password=False)}))
    try:
        opened = open_alert(cut_off)
        proxy.cut()
        delivery = AlertDelivery(cut_off, make_celery(cut_off.settings))
        countdown = delivery.handle_event(opened.id, "opened")
        assert countdown is not None and countdown <= 5
        member = keyspace.alert_outbox_member(opened.id, "opened")
        assert built.redis.zscore(keyspace.ALERT_OUTBOX, member) is not None
        sent = delivery.notify(opened.id, "opened", "slack")
        assert sent.kind == "retry" and len(slack.received) == 1  # sent; recording waits
        assert AlertIndex(built.index).get(TENANT, opened.id) is None
        # A lost message: the sweep hands the event on again once it is due.
        assert delivery.sweep(now=time.time() + 3600) == 1
        proxy.restore()
        assert delivery.handle_event(opened.id, "opened", attempt=1) is None
        assert built.redis.zscore(keyspace.ALERT_OUTBOX, member) is None
        assert delivery.notify(opened.id, "opened", "slack", attempt=1).kind == "duplicate"
        found = AlertIndex(built.index).get(TENANT, opened.id)
        assert found is not None and found["rate"] == opened.transition.rate
        assert {d["channel"]: d["state"] for d in found["deliveries"]} == {
            "slack": "delivered", "email": "pending"}
        assert len(slack.received) == 1
    finally:
        proxy.cut()
        cut_off.index.close()
