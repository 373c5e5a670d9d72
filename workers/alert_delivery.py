"""The notify queue's work (``inspectq-notify``, off the inference path): alert events into
the results index, then one notification per (alert event, channel), retried with backoff.

* :meth:`AlertDelivery.handle_event` (task ``inspectq.alert-event``): queue one
  ``inspectq.notify`` message per channel of the event (once each), then write the event to
  the index. While the database is down the event waits in Redis (its ``alert_event`` key
  and its ``ALERT_OUTBOX`` entry) and the message is retried with backoff; sending does not
  wait for the database.
* :meth:`AlertDelivery.notify` (task ``inspectq.notify``): send the event on one channel and
  record the delivery on the alert (attempts, last error, delivered_at). De-duplicated on
  (alert, event, channel), not on a send attempt: a ``sent`` marker (and the index's
  delivered row) makes a duplicate message a no-op, and a ``sending`` lock keeps two copies
  from sending at once. A retryable failure (NotifyError.retryable: timeouts, 5xx, 429, SMTP
  4xx) is retried with exponential backoff (at least the server's Retry-After) for
  ``alert_retry_hours``; one that cannot succeed (a revoked webhook, a refused login) is
  marked failed at once. Quiet hours defer a send without counting an attempt.
* :meth:`AlertDelivery.sweep` (task ``inspectq.alert-sweep``, Celery beat): hand on outbox
  entries whose message was lost (a worker died between storing an event and queueing it).

A delay never exceeds ``alert_retry_max_s`` nor half the broker's visibility timeout (a
delayed message waits unacknowledged in a worker, so it must come due before Redis hands it
out again): longer waits, such as quiet hours, are taken in several hops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Literal

import redis
from celery import Celery
from redis.exceptions import LockError

from inspectq import keyspace
from inspectq.alerting import CHANNELS, AlertEvent, Channel, effective
from inspectq.callbacks import SigningSecrets
from inspectq.config import Settings
from inspectq.index import IndexUnavailable
from inspectq.index.alerts import AlertIndex, LineAlertingStore
from inspectq.linehealth import Transition
from inspectq.queue import enqueue_alert_event, enqueue_notification
from workers.alert import OUTBOX_GRACE_S, event_ttl_s
from workers.notify import (
    AlertMessage,
    NotifyError,
    SmtpConfig,
    email_message,
    send_email,
    send_slack,
    send_webhook,
    slack_payload,
)
from workers.services import Services

log = logging.getLogger(__name__)

#: How long the sent marker lives (de-duplication of late duplicates).
SENT_TTL_S = 30 * 24 * 3600
#: A copy that finds another copy sending waits this long, then looks again.
BUSY_RETRY_S = 5.0
#: Most outbox entries one sweep hands on.
SWEEP_BATCH = 1000

OutcomeKind = Literal["delivered", "duplicate", "deferred", "retry", "busy", "failed",
                      "missing"]


@dataclass(frozen=True)
class Outcome:
    """What one run of a notification did. ``countdown``: run it again after this many
    seconds (with ``attempts``, the sends tried so far)."""

    kind: OutcomeKind
    attempts: int = 0
    countdown: float | None = None
    error: str | None = None


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """``base_s * 2**attempt`` capped at ``cap_s``, the second half of it random ("equal
    jitter"), so the retries of many alerts spread out."""
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 40))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def longest_delay_s(settings: Settings) -> float:
    """The longest delay of one message: ``alert_retry_max_s``, but at most half the
    broker's visibility timeout (see the module docstring)."""
    return min(settings.alert_retry_max_s, settings.visibility_timeout_s / 2)


class AlertDelivery:
    """The notify queue's work for one worker process; ``app`` sends the messages."""

    def __init__(self, services: Services, app: Celery) -> None:
        self._services = services
        self._settings = services.settings
        self._redis: redis.Redis = services.redis
        self._index = AlertIndex(services.index)
        self._configs = LineAlertingStore(self._index, services.redis)
        self._secrets = SigningSecrets(services.settings)
        self._app = app

    @property
    def services(self) -> Services:
        return self._services

    @property
    def _longest_s(self) -> float:
        return longest_delay_s(self._settings)

    def _backoff(self, attempt: int) -> float:
        return backoff_s(attempt, self._settings.alert_retry_base_s, self._longest_s)

    def _stored_event(self, alert_id: str, event: str) -> AlertEvent | None:
        raw = self._redis.get(keyspace.alert_event(alert_id, event))
        if raw is None:
            return None
        try:
            return AlertEvent.model_validate_json(raw)
        except ValueError:
            log.error("alert %s: unreadable %s event in Redis", alert_id, event)
            return None

    # --- the event -----------------------------------------------------------------------

    def handle_event(self, alert_id: str, event: str, attempt: int = 0) -> float | None:
        """Queue the event's notifications and write it to the index; seconds until the
        next try when the index is unreachable, else None (done)."""
        member = keyspace.alert_outbox_member(alert_id, event)
        stored = self._stored_event(alert_id, event)
        if stored is None:
            self._redis.zrem(keyspace.ALERT_OUTBOX, member)
            log.warning("alert %s: no %s event in Redis (handled and expired, or lost)",
                        alert_id, event)
            return None
        ttl = event_ttl_s(self._settings)
        for channel in stored.channels:
            queued = keyspace.alert_queued(alert_id, event, channel)
            if not self._redis.exists(queued):
                enqueue_notification(self._app, alert_id, event, channel)
                self._redis.set(queued, b"1", ex=ttl)
        try:
            self._index.record_event(stored)
        except IndexUnavailable as error:
            countdown = self._backoff(attempt)
            self._redis.zadd(keyspace.ALERT_OUTBOX,
                             {member: time.time() + countdown + OUTBOX_GRACE_S})
            log.warning("alert %s: %s event kept in Redis, index unreachable (%s); next try "
                        "in %.0f s", alert_id, event, error, countdown)
            return countdown
        self._redis.zrem(keyspace.ALERT_OUTBOX, member)
        return None

    def sweep(self, now: float | None = None) -> int:
        """Hand on every outbox entry that is due (its message was lost or is late); the
        number handed on."""
        now = time.time() if now is None else now
        due = self._redis.zrangebyscore(keyspace.ALERT_OUTBOX, "-inf", now, start=0,
                                        num=SWEEP_BATCH)
        for raw in due:
            member = raw.decode()
            self._redis.zadd(keyspace.ALERT_OUTBOX, {member: now + OUTBOX_GRACE_S}, xx=True)
            enqueue_alert_event(self._app, *keyspace.alert_of_outbox_member(member))
        return len(due)

    # --- one notification ----------------------------------------------------------------

    def notify(self, alert_id: str, event: str, channel: str, attempt: int = 0,
               now: float | None = None) -> Outcome:
        """Send ``alert_id``'s ``event`` on ``channel`` unless it was sent already; see the
        module docstring. ``attempt``: the sends tried before this run."""
        now = time.time() if now is None else now
        if channel not in CHANNELS:
            log.error("alert %s: unknown channel %r; message dropped", alert_id, channel)
            return Outcome("missing", attempt)
        try:
            stored = self._stored_event(alert_id, event) or self._index.event(alert_id, event)
        except IndexUnavailable:
            return Outcome("retry", attempt, self._backoff(attempt), "event not in Redis and "
                           "the index is unreachable")
        if stored is None:
            log.error("alert %s: no %s event in Redis or the index; %s message dropped",
                      alert_id, event, channel)
            return Outcome("missing", attempt)
        sent_key = keyspace.alert_sent(alert_id, event, channel)
        sent = self._redis.get(sent_key)
        if sent is not None:
            info = json.loads(sent)
            return self._record_sent(stored, channel, info["attempts"], info["at"], "duplicate")
        try:
            recorded = self._index.delivery(alert_id, event, channel)
        except IndexUnavailable:
            recorded = None  # the sent marker is the authority; the index only confirms
        if recorded is not None and recorded["state"] == "delivered":
            return Outcome("duplicate", recorded["attempts"])

        alerting = effective(self._settings, self._configs.get(
            stored.tenant, stored.opened["line"]))
        until = alerting.quiet_hours.until(now) if alerting.quiet_hours else None
        if until is not None:
            wait = min(until - now, self._longest_s) + 1.0
            self._try_record(stored, channel, state="deferred", attempts=attempt,
                             next_attempt_at=until)
            return Outcome("deferred", attempt, wait)

        # One copy sends at a time; under the lock, look again: a copy that held it before
        # may have sent meanwhile (the marker is set before the lock is let go).
        lock = self._redis.lock(keyspace.alert_sending(alert_id, event, channel),
                                timeout=self._settings.alert_send_timeout_s * 6 + 30)
        if not lock.acquire(blocking=False):
            return Outcome("busy", attempt, BUSY_RETRY_S)
        try:
            sent = self._redis.get(sent_key)
            if sent is not None:
                info = json.loads(sent)
                return self._record_sent(stored, channel, info["attempts"], info["at"],
                                         "duplicate")
            attempts = attempt + 1
            try:
                self._send(stored, channel)
            except NotifyError as error:
                return self._failed(stored, channel, attempts, now, str(error),
                                    error.retryable, error.retry_after_s)
            except Exception as error:  # a bug in rendering, say: retried like an outage
                log.exception("alert %s: sending %s on %s raised", alert_id, event, channel)
                return self._failed(stored, channel, attempts, now,
                                    f"{channel}: {type(error).__name__}", True, None)
            at = time.time()
            self._redis.set(sent_key, json.dumps({"at": at, "attempts": attempts}),
                            ex=SENT_TTL_S)
        finally:
            with contextlib.suppress(LockError):
                lock.release()
        log.info("alert %s: %s sent on %s (attempt %d)", alert_id, event, channel, attempts)
        return self._record_sent(stored, channel, attempts, at, "delivered")

    def _record_sent(self, stored: AlertEvent, channel: str, attempts: int, at: float,
                     kind: OutcomeKind) -> Outcome:
        """Record a sent notification; retried (without sending again) while the index is
        unreachable."""
        try:
            self._index.record_delivery(stored.tenant, stored.id, stored.event, channel,
                                        state="delivered", attempts=attempts,
                                        attempted_at=at, delivered_at=at)
        except IndexUnavailable:
            return Outcome("retry", attempts, self._backoff(attempts), "sent; recording it "
                           "waits for the index")
        return Outcome(kind, attempts)

    def _failed(self, stored: AlertEvent, channel: str, attempts: int, now: float,
                reason: str, retryable: bool, retry_after_s: float | None) -> Outcome:
        settings = self._settings
        deadline = stored.transition.at + settings.alert_retry_hours * 3600
        if retryable and now < deadline:
            countdown = min(max(retry_after_s or 0.0, self._backoff(attempts - 1)),
                            self._longest_s)
            log.warning("alert %s: %s on %s failed (attempt %d): %s; retry in %.0f s",
                        stored.id, stored.event, channel, attempts, reason, countdown)
            self._try_record(stored, channel, state="pending", attempts=attempts,
                             last_error=reason, attempted_at=now,
                             next_attempt_at=now + countdown)
            return Outcome("retry", attempts, countdown, reason)
        why = reason if not retryable else (
            f"{reason} (gave up after {attempts} attempts over {settings.alert_retry_hours:g} h)")
        log.error("alert %s: %s on %s failed for good: %s", stored.id, stored.event, channel,
                  why)
        self._try_record(stored, channel, state="failed", attempts=attempts, last_error=why,
                         attempted_at=now)
        return Outcome("failed", attempts, None, why)

    def _try_record(self, stored: AlertEvent, channel: str, **fields: object) -> None:
        """Record a delivery's progress if the index answers (progress is informative; the
        outcome that matters, delivered, is retried until recorded)."""
        try:
            self._index.record_delivery(stored.tenant, stored.id, stored.event, channel,
                                        **fields)  # type: ignore[arg-type]
        except IndexUnavailable as error:
            log.warning("alert %s: delivery progress not recorded: %s", stored.id, error)

    def _send(self, stored: AlertEvent, channel: Channel) -> None:
        settings = self._settings
        transition = stored.transition
        if stored.event == "resolved" and not transition.acknowledged:
            transition = self._with_acknowledgement(stored)
        # People see the record's id (what GET /v1/alerts/<id> and .../ack take), not the
        # monitor's own.
        transition = dataclasses.replace(transition, alert_id=stored.id)
        base = settings.public_url.rstrip("/")
        message = AlertMessage(
            transition, overlay_urls=[f"{base}/v1/jobs/{job}/overlay"
                                      for job in transition.job_ids])
        timeout = settings.alert_send_timeout_s
        if channel == "slack":
            if settings.slack_webhook_url is None:
                raise NotifyError("slack", "no Slack webhook configured", retryable=False)
            send_slack(settings.slack_webhook_url.get_secret_value(), slack_payload(message),
                       timeout)
        elif channel == "email":
            if not settings.smtp_host or not settings.alert_email_recipients:
                raise NotifyError("email", "no SMTP host or recipients configured",
                                  retryable=False)
            password = settings.smtp_password
            smtp = SmtpConfig(
                host=settings.smtp_host, port=settings.smtp_port,
                security=settings.smtp_security, username=settings.smtp_username,
                password=password.get_secret_value() if password is not None else None,
                timeout_s=timeout)
            refused = send_email(email_message(message, settings.alert_email_from,
                                               settings.alert_email_recipients), smtp)
            if refused:
                log.warning("alert %s: email refused for %s", stored.id, ", ".join(refused))
        else:
            secret = self._secrets.of(stored.tenant)
            if settings.alert_webhook_url is None or not secret:
                raise NotifyError("webhook", f"no alert webhook or no signing secret for "
                                  f"tenant {stored.tenant}", retryable=False)
            send_webhook(settings.alert_webhook_url.get_secret_value(), message, secret,
                         timeout)

    def _with_acknowledgement(self, stored: AlertEvent) -> Transition:
        """The resolution, saying whether a person acknowledged the alert meanwhile."""
        acknowledged = bool(self._redis.exists(keyspace.alert_acked(stored.id)))
        if not acknowledged:
            with contextlib.suppress(IndexUnavailable):
                acknowledged = self._index.acknowledged(stored.id)
        return dataclasses.replace(stored.transition, acknowledged=acknowledged)
