"""HMAC signatures on the HTTP requests inspectq sends to other people's servers (job
callbacks, alert webhooks), so a receiver can tell that a request came from us, unaltered,
and recently.

Every such request carries the header ``X-Inspectq-Signature``, whose value looks like this
(for the secret ``s3cret`` and the body ``{"type":"alert.opened"}``)::

    t=1767225600,v1=8d6e9aba842a396b2df621d7ac84c436760983373c1620609320202da46d4b31

``t`` is the sending time in Unix seconds and ``v1`` the lowercase hex HMAC-SHA256, keyed with
the shared secret (UTF-8), of the bytes ``"<t>." + <raw request body>``. Signing the timestamp
with the body means an old request cannot be passed off as a new one.

**Verifying, as a receiver.** Read the *raw* body bytes before any JSON parsing (parsing and
re-serialising changes the bytes), then in Python::

    from inspectq.signing import SIGNATURE_HEADER, verify

    @app.post("/inspectq-events")                      # Flask, say
    def inspectq_event():
        body = request.get_data()
        if not verify(SECRET, request.headers.get(SIGNATURE_HEADER), body):
            abort(401)
        event = json.loads(body)
        ...

In any other language: split the header on ``,`` into ``key=value`` pairs; compute
``hex(HMAC_SHA256(secret, t + "." + body))``; accept the request only when it equals a ``v1``
value under a constant-time comparison *and* ``|now - t|`` is at most 300 s. Within that
window a captured request can still be replayed, so make handling idempotent (an alert
event is identified by its ``alert_id`` and ``type``). Unknown keys (a future ``v2``) are
ignored, and several ``v1`` values may appear while a secret is being rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

SIGNATURE_HEADER = "X-Inspectq-Signature"
#: How far a signature's timestamp may be from the receiver's clock, either way.
DEFAULT_TOLERANCE_S = 300.0

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    """The ``X-Inspectq-Signature`` header value for ``body`` sent at ``now`` (default: the
    current time)."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(secret: str, header: str | None, body: bytes, *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> bool:
    """Whether ``header`` is a valid signature of ``body`` under ``secret``, made within
    ``tolerance_s`` of ``now`` (either way: clocks drift). A missing or malformed header
    (no ``t``, two of them, a non-numeric ``t``, no well-formed ``v1``) is simply invalid;
    this never raises."""
    if not header:
        return False
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        return False
    timestamp = int(timestamps[0])
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, timestamp, body)
    # Compare against every candidate (no early exit), so timing says nothing about which.
    matches = [hmac.compare_digest(expected, candidate)
               for candidate in signatures if _HEX_DIGEST.fullmatch(candidate)]
    return any(matches)
