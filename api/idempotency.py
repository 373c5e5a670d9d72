"""``Idempotency-Key``: a repeated upload with the same key gets the same job back.

The claim is an S3 object ``keyspace.idempotency_claim(tenant, key)`` written with a conditional
put, so it is durable and race-free: of two concurrent requests with one key exactly one
writes it, and the other answers with the winner's job. The key itself never becomes part of
an S3 key, only its digest. Claims carry a fingerprint of the request (the image's digest
and every option: line, camera, thresholds, metadata), so reusing a key for a different
image or different parameters is refused (422), as payment APIs do, instead of silently
answering with a job made from other inputs.

A request that dies after claiming a key and before recording its job (the API process
killed) must not leave the key answering 409 forever: once the claim is
``CLAIM_ABANDONED_AFTER_S`` old, a retry *adopts* the claimed job id and accepts the image
under it. Adopting, rather than deleting and re-claiming, keeps concurrent retries safe: they
all build the same job, whose one outcome the conditional result write guarantees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from api.errors import ApiError
from inspectq import keyspace
from inspectq.storage import ObjectExists, ObjectStore

log = logging.getLogger(__name__)

_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


#: A claim this old whose job has no record belongs to a request that died between claiming
#: the key and recording the job (an API process killed mid-ingest); accepting takes a few
#: milliseconds there, so 30 s is far beyond a slow but live request.
CLAIM_ABANDONED_AFTER_S = 30.0


@dataclass(frozen=True)
class Claim:
    job_id: str
    image_sha256: str
    #: sha256 of the whole request (see :func:`request_fingerprint`); "" in claims written
    #: before it existed, which are compared by image only.
    request_sha256: str = ""
    #: Unix time of the claim (0 in claims written before it was recorded).
    claimed_at: float = 0.0

    def matches(self, other: Claim) -> bool:
        if self.request_sha256 and other.request_sha256:
            return self.request_sha256 == other.request_sha256
        return self.image_sha256 == other.image_sha256

    def abandoned(self, now: float) -> bool:
        """True when the claim is old enough that a job without a record never got one."""
        return now - self.claimed_at > CLAIM_ABANDONED_AFTER_S


def request_fingerprint(image_sha256: str, options: dict[str, Any]) -> str:
    """One digest of the image and the options as the client sent them (defaults are not
    filled in, so a change of the server's defaults does not break a client's retry)."""
    canonical = json.dumps({"image": image_sha256, "options": options}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(value: str) -> str:
    if not _KEY_PATTERN.fullmatch(value):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters.",
        )
    return value


class IdempotencyClaims:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def find(self, tenant: str, key: str) -> Claim | None:
        data = self._store.get_json(keyspace.idempotency_claim(tenant, key))
        return None if data is None else Claim(**data)

    def claim(self, tenant: str, key: str, mine: Claim) -> Claim:
        """Claim ``key`` for ``mine.job_id``; returns the claim that holds the key, ours or
        the one a concurrent request wrote first."""
        try:
            self._store.put_json(keyspace.idempotency_claim(tenant, key), mine.__dict__,
                                 only_if_new=True)
        except ObjectExists:
            winner = self.find(tenant, key)
            if winner is None:  # released between our write and our read: the caller retries
                raise in_progress() from None
            return winner
        return mine

    def release(self, tenant: str, key: str) -> None:
        """Forget a claim whose job could not be accepted, so a retry starts afresh."""
        self._store.delete(keyspace.idempotency_claim(tenant, key))


def in_progress() -> ApiError:
    return ApiError(
        409,
        "idempotency_in_progress",
        "A request with this Idempotency-Key is still being accepted; retry shortly.",
        headers={"Retry-After": "1"},
    )


def mismatch() -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was already used for a different request (another image, or"
        " other line, camera, thresholds or metadata).",
    )
