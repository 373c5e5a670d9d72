"""The shared stores one process talks to: S3, Redis, the job records kept over both, and the
results index (SQL) built from them.

The API's and the workers' service bundles extend :class:`Backends` with their own clients;
the ops commands (``inspectq deadletter``, ``inspectq reconcile``) need nothing more. Build
it in the process that uses it: nothing connects until the first call, and no client may
cross a ``fork`` (Celery's prefork pool forks after the app is built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import redis

from inspectq.config import Settings
from inspectq.connections import connect_redis
from inspectq.index import ResultsIndex
from inspectq.jobs import JobStore
from inspectq.storage import ObjectStore


@dataclass(frozen=True)
class Backends:
    settings: Settings
    store: ObjectStore
    redis: redis.Redis
    jobs: JobStore
    index: ResultsIndex

    @classmethod
    def connect(cls, settings: Settings) -> Self:
        """The stores for ``settings`` (a subclass adds its own clients: ``vars()`` of this
        is the keyword arguments for the shared part)."""
        store = ObjectStore(settings)
        redis_client = connect_redis(settings)
        return cls(settings=settings, store=store, redis=redis_client,
                   jobs=JobStore(settings, store, redis_client),
                   index=ResultsIndex.from_settings(settings))
