"""Stage 9: alert people when a production line's defect rate spikes (after the outcome is
recorded; an alert never fails a job).

State lives in Redis, per line, and holds job ids only (no image data; keys in
:mod:`inspectq.keyspace`):

* ``alert_seen(line)`` and ``alert_defective(line)``: sorted sets of job ids scored by the
  time they were decided. Members are job ids, so a redelivered job is counted once.
* ``alert_cooldown(line)``: set with a TTL when an alert fires; while it exists the line
  does not alert again.

The rate is ``defective / seen`` over the last ``alert_window_s`` seconds, checked only once
``alert_min_images`` images were seen. REJECT counts as defective; REVIEW too when
``alert_count_review`` is set. Sending failures are logged and never fail the job.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage

import redis

from inspectq import keyspace
from inspectq.config import Settings
from inspectq.result import Decision

log = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Alert:
    line: str
    rate: float
    defective: int
    seen: int
    window_s: int

    @property
    def text(self) -> str:
        return (
            f"inspectq: line {self.line} defect rate {self.rate:.0%} "
            f"({self.defective} of {self.seen} images in the last {self.window_s} s)"
        )


class DefectRateMonitor:
    """Counts decisions per line over a sliding window and says when to alert."""

    def __init__(self, settings: Settings, redis_client: redis.Redis) -> None:
        self._settings = settings
        self._redis = redis_client

    def observe(self, line: str, job_id: str, decision: Decision, now: float) -> Alert | None:
        """Count one decided job; an :class:`Alert` when the line just crossed the rate
        and is not in its cooldown, else None."""
        settings = self._settings
        seen_key, bad_key = keyspace.alert_seen(line), keyspace.alert_defective(line)
        defective = decision is Decision.REJECT or (
            decision is Decision.REVIEW and settings.alert_count_review
        )
        since = now - settings.alert_window_s
        pipe = self._redis.pipeline()
        pipe.zadd(seen_key, {job_id: now})
        if defective:
            pipe.zadd(bad_key, {job_id: now})
        for key in (seen_key, bad_key):
            pipe.zremrangebyscore(key, "-inf", f"({since}")
            pipe.expire(key, settings.alert_window_s * 2)
        pipe.zcard(seen_key)
        pipe.zcard(bad_key)
        *_, seen, bad = pipe.execute()
        if seen < settings.alert_min_images or bad / seen <= settings.alert_defect_rate:
            return None
        cooldown = max(1, settings.alert_cooldown_s)
        if not self._redis.set(keyspace.alert_cooldown(line), job_id, nx=True, ex=cooldown):
            return None
        return Alert(line, bad / seen, int(bad), int(seen), settings.alert_window_s)


def send_slack(webhook_url: str, alert: Alert) -> None:
    request = urllib.request.Request(
        webhook_url,
        data=json.dumps({"text": alert.text}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=_SEND_TIMEOUT_S) as response:
        response.read()


def send_email(settings: Settings, alert: Alert) -> None:
    if not (settings.smtp_host and settings.alert_email_to):
        raise ValueError("smtp_host and alert_email_to must be set to send email")
    message = EmailMessage()
    message["Subject"] = f"[inspectq] defect rate alert on line {alert.line}"
    message["From"] = settings.alert_email_from
    message["To"] = settings.alert_email_to
    message.set_content(alert.text + "\n")
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=_SEND_TIMEOUT_S) as smtp:
        smtp.send_message(message)


def notify(settings: Settings, alert: Alert) -> None:
    """Send the alert on every configured channel; log (never raise) what fails."""
    log.warning("%s", alert.text)
    if settings.slack_webhook_url is not None:
        try:
            send_slack(settings.slack_webhook_url.get_secret_value(), alert)
        except Exception:
            log.exception("Slack alert for line %s failed", alert.line)
    if settings.smtp_host and settings.alert_email_to:
        try:
            send_email(settings, alert)
        except Exception:
            log.exception("email alert for line %s failed", alert.line)
