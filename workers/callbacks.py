"""The callback sender: delivers the outbox (``inspectq.index.outbox``) to its URLs.

It claims due deliveries in small batches and POSTs each job's public JSON (what
``GET /v1/jobs/<id>`` answers) with ``Content-Type: application/json`` and

* ``X-Inspectq-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, keyed by the
  job's tenant's secret (``inspectq.callbacks.SigningSecrets``);
* ``X-Inspectq-Delivery``: the delivery's id, the same on every retry (receivers can
  de-duplicate on it); ``X-Inspectq-Event: job.ended``.

A 2xx delivers it. Anything else (an error status, a timeout, a refused connection) is
retried with exponential backoff, equal jitter, from 2 s up to ``callback_retry_max_s``,
until ``callback_retry_hours`` after it was created; then it is ``failed`` and
``inspectq callbacks replay`` sends it again. Redirects are not followed (a redirect could
lead anywhere). Nothing here runs on the inference path: the indexer process runs it
in its own thread.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from inspectq.backends import Backends
from inspectq.callbacks import CallbackUrlError, SigningSecrets, check_callback_url
from inspectq.index import IndexUnavailable
from inspectq.index.outbox import Delivery, Outbox
from inspectq.signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

#: Deliveries claimed per round, and how long a claim keeps others off them.
CLAIM_BATCH = 20
LEASE_S = 120.0
IDLE_WAIT_S = 1.0


def retry_delay_s(attempts: int, cap_s: float) -> float:
    """2**attempts seconds (attempts made so far, from 1), at most ``cap_s``, the second
    half random so many failing deliveries spread out."""
    ceiling = min(cap_s, 2.0 ** max(1, attempts))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class CallbackSender:
    def __init__(self, backends: Backends) -> None:
        settings = backends.settings
        self.backends = backends
        self.outbox = Outbox(backends.index, settings.callback_retry_hours)
        self.secrets = SigningSecrets(settings)
        self.session = requests.Session()
        self.delivered = 0
        #: Outcomes of attempts made while the index was unreachable, oldest first: written
        #: before anything new is claimed, so a database blip after a POST delays the
        #: delivery's next try by the blip, not by the claim's lease (LEASE_S).
        self.unrecorded: list[tuple[str, dict[str, Any]]] = []

    def send_due(self) -> int:
        """Attempt every due delivery claimed in one round; returns how many were tried.
        Raises IndexUnavailable while the index is down."""
        while self.unrecorded:
            delivery_id, outcome = self.unrecorded[0]
            self.outbox.record_attempt(delivery_id, **outcome)
            self.unrecorded.pop(0)
        claimed = self.outbox.claim_due(CLAIM_BATCH, LEASE_S)
        for delivery in claimed:
            self._attempt(delivery)
        return len(claimed)

    def _attempt(self, delivery: Delivery) -> None:
        settings = self.backends.settings
        status: int | None = None
        try:
            record = self.backends.jobs.get(delivery.job_id)
            secret = self.secrets.of(delivery.tenant)
            if record is None or secret is None:
                raise _Permanent("the job's record is gone" if record is None
                                 else f"tenant {delivery.tenant!r} has no signing secret")
            check_callback_url(delivery.url, settings.callback_allow_private)
            body = json.dumps(record.public(), separators=(",", ":")).encode()
            response = self.session.post(
                delivery.url, data=body, timeout=settings.callback_timeout_s,
                allow_redirects=False, headers={
                    "Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
                    "X-Inspectq-Delivery": delivery.id, "X-Inspectq-Event": "job.ended",
                    "User-Agent": "inspectq-callbacks/1"})
            status = response.status_code
            if 200 <= status < 300:
                self._record(delivery.id, status=status, error=None, delivered=True,
                             retry_at=None)
                self.delivered += 1
                return
            error = f"HTTP {status}"
        except (_Permanent, CallbackUrlError) as problem:
            log.warning("callback %s to %s abandoned: %s", delivery.id, delivery.url, problem)
            self._record(delivery.id, status=None, error=str(problem), delivered=False,
                         retry_at=None)
            return
        except requests.RequestException as problem:
            error = type(problem).__name__
        retry_at = datetime.now(UTC) + timedelta(
            seconds=retry_delay_s(delivery.attempts + 1, settings.callback_retry_max_s))
        if retry_at > delivery.retry_until:
            retry_at = None
        log.info("callback %s to %s: %s; %s", delivery.id, delivery.url, error,
                 "retrying" if retry_at else "giving up")
        self._record(delivery.id, status=status, error=error, delivered=False,
                     retry_at=retry_at)

    def _record(self, delivery_id: str, **outcome: Any) -> None:
        try:
            self.outbox.record_attempt(delivery_id, **outcome)
        except IndexUnavailable:
            self.unrecorded.append((delivery_id, outcome))

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; a database outage only delays deliveries."""
        while not stop.is_set():
            try:
                if self.send_due() == 0:
                    stop.wait(IDLE_WAIT_S)
            except IndexUnavailable as error:
                log.warning("callbacks: %s; retrying in 5 s", error)
                stop.wait(5.0)
            except Exception:
                log.exception("callbacks: unexpected error; retrying in 5 s")
                stop.wait(5.0)


class _Permanent(Exception):
    """A delivery that no retry can make work."""
