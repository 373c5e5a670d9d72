"""The clients one API process talks to, built once by the app factory and kept on the app
(``app.extensions["inspectq"]``), never at import time."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app

from api.apikeys import KeyRegistry
from api.idempotency import IdempotencyClaims
from api.metrics import ApiMetrics
from inspectq.config import Settings
from inspectq.connections import connect_redis
from inspectq.jobs import JobStore
from inspectq.queue import make_celery
from inspectq.storage import ObjectStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: ObjectStore
    redis: redis.Redis
    jobs: JobStore
    celery: Celery
    keys: KeyRegistry
    claims: IdempotencyClaims
    metrics: ApiMetrics

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Create the clients. Nothing connects yet: an outage shows at the first request
        (503) and in ``/readyz``, never as a crash at start-up."""
        store = ObjectStore(settings)
        redis_client = connect_redis(settings)
        return cls(
            settings=settings,
            store=store,
            redis=redis_client,
            jobs=JobStore(settings, store, redis_client),
            celery=make_celery(settings),
            keys=KeyRegistry(settings.api_keys_file, settings.api_key.get_secret_value()),
            claims=IdempotencyClaims(store),
            metrics=ApiMetrics(),
        )


def services() -> Services:
    """The running app's services (inside a request or app context)."""
    return current_app.extensions["inspectq"]
