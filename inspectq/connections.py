"""Client construction for the shared services, with timeouts so that an outage fails fast."""

from __future__ import annotations

import redis

from inspectq.config import Settings


def connect_redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=30,
        retry_on_timeout=True,
    )
