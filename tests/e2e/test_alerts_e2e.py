"""Line health through the real stack: a line goes from healthy to spiking to recovered with
real images, and a real SMTP server (aiosmtpd) and an HTTP receiver standing in for Slack
(that fails twice) each get exactly one alert and one recovery, with the right numbers.

The line is configured through the API to learn fast (warm-up 40 images at a 10 % prior, the
REJECT rate only), so the run is a hundred-odd images. The expected numbers come from the
real monitor (:class:`inspectq.linehealth.LineHealthMonitor`) replaying the decisions the
stack made, in the order the stack saw them.
"""

from __future__ import annotations

import email
import json
import time
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message as MessageHandler

from devstack import samples
from devstack.client import InspectqClient
from devstack.stack import StackConfig
from inspectq import keyspace
from inspectq.alerting import EffectiveAlerting
from inspectq.linehealth import LineHealthMonitor, StreamKey, Transition
from tests.e2e.conftest import ALERT_SLACK_PORT, ALERT_SMTP_PORT
from tests.receiver import Receiver

LINE = "e2e-alerts"
ALERTING = {"rates": ["reject"], "warmup_images": 40, "recovery_images": 20,
            "min_images": 20, "prior_rates": {"reject": 0.1}, "channels": ["slack", "email"]}


class Inbox(MessageHandler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    def handle_message(self, message: Message) -> None:
        self.messages.append(message)


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=ALERT_SMTP_PORT,
                            server_hostname="localhost")
    controller.start()
    yield handler
    controller.stop()


@pytest.fixture
def slack() -> Iterator[Receiver]:
    receiver = Receiver(port=ALERT_SLACK_PORT, fail_next=[500, 500]).start()
    yield receiver
    receiver.stop()


def call(client: InspectqClient, method: str, path: str, **kwargs: Any) -> Any:
    response = client._send(method, f"{client.base_url}{path}", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def wait(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def text_of(mail: Message) -> str:
    parsed = email.message_from_bytes(mail.as_bytes())
    return next(part.get_payload(decode=True).decode() for part in parsed.walk()
                if part.get_content_type() == "text/plain")


def test_a_line_spikes_and_recovers_one_alert_and_one_recovery_on_each_channel(
        stack: StackConfig, client: InspectqClient, inbox: Inbox, slack: Receiver) -> None:
    started = time.monotonic()
    configured = call(client, "PUT", f"/v1/lines/{LINE}/alerting", json=ALERTING)
    assert configured["effective"]["channels"] == ["slack", "email"]
    replica = LineHealthMonitor(StreamKey(LINE, "reject"),
                                EffectiveAlerting(**configured["effective"]).monitor_config())
    redis_client = redis.Redis.from_url(stack.settings.redis_url)
    demo = samples.samples()
    clean = [s.png() for s in demo if s.defect is None and "strip" not in s.name]
    stain = next(s for s in demo if s.defect == "stain").png()

    def inspect(image: bytes) -> Transition | None:
        """One image through the stack, waited for until its line counted it; what the
        replica says it did to the REJECT rate."""
        job = client.wait_done(client.submit(image, line=LINE)["id"], timeout_s=120)
        assert job["status"] == "done", job
        wait(lambda: redis_client.exists(keyspace.linehealth_counted(job["id"])), 30,
             "the line to count the job")
        return replica.observe(job["result"]["decision"] == "REJECT", job["id"], time.time())

    # Healthy: 40 images, every tenth a stained one (a 10 % REJECT baseline is learned).
    decisions = [inspect(stain if i % 10 == 0 else clean[i % len(clean)]) for i in range(40)]
    assert decisions == [None] * 40 and not replica.learning
    assert call(client, "GET", f"/v1/alerts?line={LINE}")["alerts"] == []
    # Spiking: stained images until the (real, replayed) monitor opens its alert.
    opened = None
    spiking = 0
    while opened is None and spiking < 60:
        opened = inspect(stain)
        spiking += 1
    assert opened is not None and opened.kind == "opened"
    alert = wait(lambda: call(client, "GET", f"/v1/alerts?line={LINE}")["alerts"], 30,
                 "the alert in the history")
    assert len(alert) == 1 and alert[0]["state"] == "open"
    alert_id = alert[0]["id"]
    # Recovered: clean images until it resolves.
    resolved = None
    recovery = 0
    while resolved is None and recovery < 400:
        resolved = inspect(clean[recovery % len(clean)])
        recovery += 1
    assert resolved is not None and resolved.kind == "resolved"

    def delivered() -> dict | None:
        found = call(client, "GET", f"/v1/alerts/{alert_id}")
        states = {(d["event"], d["channel"]): d["state"] for d in found["deliveries"]}
        return found if found["state"] == "resolved" and set(states.values()) == {
            "delivered"} and len(states) == 4 else None

    record = wait(delivered, 120, "both events delivered on both channels")
    time.sleep(2.0)  # a duplicate would arrive by now

    # The record holds the numbers the monitor computed.
    assert (record["rate"], record["baseline"], record["limit"], record["window"],
            record["events"], record["job_ids"]) == (
        opened.rate, opened.baseline, opened.limit, opened.window, opened.events,
        list(opened.job_ids))
    assert record["resolution"]["rate"] == resolved.rate
    slack_opened = next(d for d in record["deliveries"]
                        if (d["event"], d["channel"]) == ("opened", "slack"))
    assert slack_opened["attempts"] == 3 and "HTTP 500" in slack_opened["last_error"]

    # Slack: failed twice, then exactly one alert and one recovery.
    posts = [post.body.decode() for post in slack.received]
    assert slack.attempts == 4 and len(posts) == 2, posts
    alert_post, recovery_post = (json.loads(body) for body in posts)
    header = alert_post["blocks"][0]["text"]["text"]
    assert header == (f"REJECT rate alert on line {LINE}: {opened.rate:.1%} "
                      f"(baseline {opened.baseline:.1%})")
    fields = {f["text"].split("\n")[0].strip("*"): f["text"].split("\n")[1]
              for f in alert_post["blocks"][2]["fields"]}
    assert fields["Rate"] == f"REJECT {opened.rate:.1%} ({opened.events} of {opened.window})"
    assert fields["Baseline"] == f"{opened.baseline:.1%}"
    assert fields["Limit"] == f"{opened.limit:.1%}"
    assert recovery_post["blocks"][0]["text"]["text"] == (
        f"Resolved: REJECT rate alert on line {LINE}")
    assert "back in control" in recovery_post["text"]

    # Email: exactly one alert and one recovery, threaded, with the same numbers.
    mails = [mail for mail in inbox.messages if LINE in mail["Subject"]]
    assert [m["Subject"].startswith("[inspectq] Resolved") for m in mails] == [False, True]
    opening_mail, recovery_mail = mails
    assert recovery_mail["In-Reply-To"] == opening_mail["Message-ID"]
    body = text_of(opening_mail)
    assert f"REJECT {opened.rate:.1%} ({opened.events} of {opened.window})" in body
    assert f"Baseline: {opened.baseline:.1%}" in body
    overlay = f"{stack.api_url}/v1/jobs/{opened.job_ids[-1]}/overlay"
    assert overlay in body
    assert client.png(opened.job_ids[-1], "overlay").startswith(b"\x89PNG")  # the link works
    assert f"({resolved.rate:.1%} over the last {resolved.window} images" in text_of(
        recovery_mail)
    print(f"\nalert e2e: {len(decisions)} healthy + {spiking} spiking + {recovery} "
          f"recovering images, {time.monotonic() - started:.0f} s; opened "
          f"{opened.rate:.1%} over {opened.window} (baseline {opened.baseline:.1%}, limit "
          f"{opened.limit:.1%}); resolved at {resolved.rate:.1%} over {resolved.window}")
