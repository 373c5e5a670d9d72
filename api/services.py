"""The clients one API process talks to, built once by the app factory and kept on the app
(``app.extensions["inspectq"]``), never at import time."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from api.apikeys import KeyRegistry
from api.idempotency import IdempotencyClaims
from api.metrics import ApiMetrics
from inspectq.backends import Backends
from inspectq.config import Settings
from inspectq.queue import make_celery


@dataclass(frozen=True)
class Services(Backends):
    """S3, Redis and the job records (:class:`Backends`), plus what only the API uses."""

    celery: Celery
    keys: KeyRegistry
    claims: IdempotencyClaims
    metrics: ApiMetrics

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Create the clients. Nothing connects yet: an outage shows at the first request
        (503) and in ``/readyz``, never as a crash at start-up."""
        core = Backends.connect(settings)
        return cls(
            **vars(core),
            celery=make_celery(settings),
            keys=KeyRegistry(settings.api_keys_file, settings.api_key.get_secret_value()),
            claims=IdempotencyClaims(core.store),
            metrics=ApiMetrics(core.redis),
        )


def services() -> Services:
    """The running app's services (inside a request or app context)."""
    return current_app.extensions["inspectq"]
