"""Every Redis key, Redis channel and S3 key inspectq uses, on one page.

Nothing else formats a key: code asks this module for the key of a concept. Keys are built
only from validated job ids (``inspectq.jobs.is_job_id``), tenant and line names that match
strict patterns, and hex digests, never from raw client input, so nothing a client sends can
steer a read or write elsewhere.

S3 (the durable record)::

    jobs/<job>/image            the uploaded bytes
    jobs/<job>/result.json      the job's one outcome (first writer wins)
    jobs/<job>/mask-<run>.png   class index per pixel, one per run of the job: the job's
                                record names the one behind its recorded outcome
    jobs/<job>/mask.png         the same, as written before per-run masks (older jobs)
    jobs/<job>/heatmap-<run>.png  defect probability per pixel (grey, 255 = 1.0), written
                                beside its run's mask (none beside a mask.png)
    jobs/<job>/overlay.png      drawn by the API on first request
    jobs/<job>/feedback/<at>-<token>.json   one operator feedback entry each
    pending/<job>               accepted record, until the reconciler sees the outcome
    deadletter/<job>.json       a poison message's entry
    quarantine/<original key>   a stored record no reader could parse, moved aside
    idempotency/<tenant>/<sha256(Idempotency-Key)>
    batches/<tenant>/<batch>.json   a batch's job ids, in submission order

Redis (cache and coordination; losing it loses nothing durable)::

    inspectq:job:<job>                       the record, cached with a TTL
    inspectq:job-ended:<job>                 pub/sub channel: the job has ended
    inspectq:deliveries:<job>:<retry>        deliveries of one message (poison detection)
    inspectq:deadletter                      list of dead-lettered job ids, newest first
    inspectq:requeued:<job>                  reconciler guard against a double enqueue
    inspectq:quarantined                     count of records moved to quarantine/ (a metric)
    inspectq:dedup:<tenant>:<model sha>:<image sha>   inference cache (same tenant, bytes, model)
    inspectq:linehealth:<tenant>:<stream>    one stream's line-health monitor state (JSON;
                                             the stream's open alert lives in it), 30 d TTL
    inspectq:linehealth-counted:<job>        the job fed its streams (set with the state)
    inspectq:linehealth-turn:<tenant>:<line>  a worker that lost the race too often commits
                                             next (short-lived)
    inspectq:alerting:<tenant>:<line>        cached per-line alerting configuration (JSON)
    inspectq:alert-event:<alert>:<event>     an alert opened/resolved, as the notify queue
                                             reads it (JSON; until the index has it and
                                             every channel is done)
    inspectq:alert-outbox                    sorted set of "<alert>:<event>" not yet in the
                                             index, scored by when to hand it on again
    inspectq:alert-queued:<alert>:<event>:<channel>   its notify message was sent
    inspectq:alert-sending:<alert>:<event>:<channel>  lock held while it is being sent
    inspectq:alert-sent:<alert>:<event>:<channel>     delivered (de-duplication)
    inspectq:alert-acked:<alert>             the alert's acknowledgement (JSON)
    inspectq:index:todo                      ended jobs' ids, for the indexer (a list)
    inspectq                                 the Celery queue (a list)
    inspectq-notify                          the alert notification queue (a list)
    unacked                                  kombu's hash of delivered, unacked messages
    inspectq-ratelimit/...                   flask-limiter's counters (prefix)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# --- S3 ---------------------------------------------------------------------------------

PENDING_PREFIX = "pending/"
DEADLETTER_PREFIX = "deadletter/"
IDEMPOTENCY_PREFIX = "idempotency/"
QUARANTINE_PREFIX = "quarantine/"


@dataclass(frozen=True)
class JobKeys:
    """Where one job's objects live. ``prefix`` is ``jobs/<job_id>/``."""

    prefix: str

    @property
    def image(self) -> str:
        return self.prefix + "image"

    @property
    def result(self) -> str:
        return self.prefix + RESULT_NAME

    @property
    def mask(self) -> str:
        """The mask of a job recorded before masks were written per run."""
        return self.prefix + "mask.png"

    def run_mask(self, run: str) -> str:
        """The mask one run of the job wrote (``run``: a random token per run)."""
        return f"{self.prefix}mask-{run}.png"
    @property
    def overlay(self) -> str:
        return self.prefix + "overlay.png"

    @property
    def feedback_prefix(self) -> str:
        return self.prefix + "feedback/"

    def feedback_entry(self, at: str, token: str) -> str:
        """One feedback entry; ``at`` (ISO time) first, so a listing is in time order."""
        return f"{self.feedback_prefix}{at}-{token}.json"


JOBS_PREFIX = "jobs/"
RESULT_NAME = "result.json"


def keys_for(job_id: str) -> JobKeys:
    """S3 keys of a job's objects."""
    return JobKeys(prefix=f"{JOBS_PREFIX}{job_id}/")


def heatmap_beside(mask_key: str) -> str | None:
    """The heatmap written with the run mask ``mask_key`` (``jobs/<job>/mask-<run>.png``);
    None for a mask of before per-run masks, which has none."""
    prefix, found, name = mask_key.rpartition("/mask-")
    return f"{prefix}/heatmap-{name}" if found else None


def job_id_of_result(key: str) -> str | None:
    """The job whose outcome ``key`` is (``jobs/<id>/result.json``), else None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == JOBS_PREFIX and parts[2] == RESULT_NAME:
        return parts[1]
    return None


def pending(job_id: str) -> str:
    """The accepted record of a job without a swept outcome."""
    return PENDING_PREFIX + job_id


def job_id_of_pending(key: str) -> str:
    return key.removeprefix(PENDING_PREFIX)


def quarantined(key: str) -> str:
    """Where an unreadable stored record is moved, under its original key."""
    return QUARANTINE_PREFIX + key


def deadletter_entry(job_id: str) -> str:
    return f"{DEADLETTER_PREFIX}{job_id}.json"


def batch_manifest(tenant: str, batch_id: str) -> str:
    """The job ids of a batch (``batch_id`` validated by ``inspectq.jobs.is_batch_id``)."""
    return f"batches/{tenant}/{batch_id}.json"


def idempotency_claim(tenant: str, key: str) -> str:
    """The claim of an ``Idempotency-Key``: only its digest becomes part of the S3 key."""
    return f"{IDEMPOTENCY_PREFIX}{tenant}/{hashlib.sha256(key.encode()).hexdigest()}"


# --- Redis ------------------------------------------------------------------------------

#: The Celery queue (a Redis list of messages) and kombu's hash of unacked deliveries.
QUEUE = "inspectq"
#: The queue of alert bookkeeping and notifications (``inspectq.queue``: their tasks), kept
#: apart so a slow mail server never delays an inspection.
NOTIFY_QUEUE = "inspectq-notify"
UNACKED = "unacked"
DEADLETTER_LIST = "inspectq:deadletter"
QUARANTINED_COUNT = "inspectq:quarantined"
#: Ids of jobs that ended, for the indexer to write to the results index (a Redis list; the
#: reconciler catches up whatever it loses, see ``workers.indexer``).
INDEX_QUEUE = "inspectq:index:todo"
#: Alert events not yet written to the results index (a sorted set, see workers.alert).
ALERT_OUTBOX = "inspectq:alert-outbox"
RATE_LIMIT_PREFIX = "inspectq-ratelimit"
JOB_ENDED_PREFIX = "inspectq:job-ended:"
#: The pattern one subscription per process listens on (``inspectq.endings``).
JOB_ENDED_PATTERN = JOB_ENDED_PREFIX + "*"


def job_cache(job_id: str) -> str:
    return f"inspectq:job:{job_id}"


def job_ended(job_id: str) -> str:
    """The pub/sub channel ``JobStore.finish`` publishes on when the job ends."""
    return JOB_ENDED_PREFIX + job_id


def job_id_of_channel(channel: str) -> str:
    return channel.removeprefix(JOB_ENDED_PREFIX)


def deliveries(job_id: str, retries: int) -> str:
    """Delivery count of one message: the job at its ``retries``-th retry."""
    return f"inspectq:deliveries:{job_id}:{retries}"


def deliveries_pattern(job_id: str) -> str:
    """Every delivery counter of a job (SCAN pattern)."""
    return f"inspectq:deliveries:{job_id}:*"


def requeued(job_id: str) -> str:
    return f"inspectq:requeued:{job_id}"


def inference_cache(tenant: str, model_sha256: str, image_sha256: str) -> str:
    """Per tenant: a hit would otherwise tell one tenant that another inspected the image."""
    return f"inspectq:dedup:{tenant}:{model_sha256}:{image_sha256}"


def linehealth_state(tenant: str, stream: str) -> str:
    """The monitor state of one stream (``StreamKey.name``: ``<line>/<camera or *>/<rate>``)."""
    return f"inspectq:linehealth:{tenant}:{stream}"


def linehealth_counted(job_id: str) -> str:
    """Set in the same transaction as the states a job fed: a redelivered job counts once."""
    return f"inspectq:linehealth-counted:{job_id}"


def linehealth_turn(tenant: str, line: str) -> str:
    """Held briefly by the worker whose turn it is to update the line's states."""
    return f"inspectq:linehealth-turn:{tenant}:{line}"


def line_alerting(tenant: str, line: str) -> str:
    """The cached copy of a line's alerting configuration (the index holds the real one)."""
    return f"inspectq:alerting:{tenant}:{line}"


def alert_event(alert_id: str, event: str) -> str:
    """An alert's "opened" or "resolved" event, as the notify queue's tasks read it."""
    return f"inspectq:alert-event:{alert_id}:{event}"


def alert_outbox_member(alert_id: str, event: str) -> str:
    return f"{alert_id}:{event}"


def alert_of_outbox_member(member: str) -> tuple[str, str]:
    """(alert id, event) of an ALERT_OUTBOX member."""
    alert_id, _, event = member.rpartition(":")
    return alert_id, event


def alert_queued(alert_id: str, event: str, channel: str) -> str:
    return f"inspectq:alert-queued:{alert_id}:{event}:{channel}"


def alert_sending(alert_id: str, event: str, channel: str) -> str:
    return f"inspectq:alert-sending:{alert_id}:{event}:{channel}"


def alert_sent(alert_id: str, event: str, channel: str) -> str:
    return f"inspectq:alert-sent:{alert_id}:{event}:{channel}"


def alert_acked(alert_id: str) -> str:
    return f"inspectq:alert-acked:{alert_id}"
