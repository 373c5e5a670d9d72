"""Per-API-key rate limits (flask-limiter, counters in Redis so every API process shares them).

A limited request gets 429 ``rate_limited`` with ``Retry-After``: the seconds until its
window resets, read from Redis only then. ``X-RateLimit-*`` headers are not sent on every
response, because they cost two more Redis round trips per request, on every upload and
every poll. If Redis is down the limiter lets requests through (``swallow_errors``); ingest
then answers 503 on its own Redis check anyway.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Blueprint, Flask, Response
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

from api.auth import bearer_token
from api.errors import ApiError, error_response
from inspectq.config import Settings
from inspectq.keyspace import RATE_LIMIT_PREFIX


def _limit_key() -> str:
    """The presented key's digest (never the key itself: limiter keys land in Redis)."""
    token = bearer_token()
    if token is None:
        return "addr:" + get_remote_address()
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def install_rate_limits(app: Flask, settings: Settings, blueprint: Blueprint) -> Limiter:
    """Limit every route of ``blueprint`` to ``settings.rate_limit`` per API key."""
    limiter = Limiter(
        _limit_key,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 3, "socket_timeout": 5},
        headers_enabled=False,
        swallow_errors=True,
        key_prefix=RATE_LIMIT_PREFIX,
    )
    limiter.limit(settings.rate_limit)(blueprint)
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(error: RateLimitExceeded) -> Response:
        window_s = error.limit.limit.get_expiry()
        current = limiter.current_limit
        reset_in = current.reset_at - time.time() if current is not None else window_s
        retry_after = max(1, min(window_s, math.ceil(reset_in)))
        return error_response(ApiError(
            429, "rate_limited",
            f"Rate limit exceeded ({error.description} per API key). Retry later.",
            headers={"Retry-After": str(retry_after)},
        ))

    return limiter
