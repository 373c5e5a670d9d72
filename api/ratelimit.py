"""Per-API-key rate limits (flask-limiter, counters in Redis so every API process shares them).

A limited request gets 429 with ``Retry-After``. If Redis is down the limiter lets requests
through (``swallow_errors``); ingest then answers 503 on its own Redis check anyway.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from api.auth import bearer_token
from inspectq.config import Settings


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
        headers_enabled=True,
        swallow_errors=True,
        key_prefix="inspectq-ratelimit",
    )
    limiter.limit(settings.rate_limit)(blueprint)
    limiter.init_app(app)
    return limiter
