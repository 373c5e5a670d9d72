"""The clients one worker process uses, built from Settings in that process.

Nothing here connects at import time: :func:`build_services` is called on a worker's first
task (after the prefork pool forked it), so no socket or gRPC channel crosses a fork.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from inspectq.config import Settings
from inspectq.connections import connect_redis
from inspectq.jobs import JobStore
from inspectq.storage import ObjectStore
from workers.alert import DefectRateMonitor
from workers.infer import TritonModel


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    redis: redis.Redis
    jobs: JobStore
    model: TritonModel
    monitor: DefectRateMonitor


def build_services(settings: Settings) -> Services:
    store = ObjectStore(settings)
    redis_client = connect_redis(settings)
    return Services(
        settings=settings,
        store=store,
        redis=redis_client,
        jobs=JobStore(settings, store, redis_client),
        model=TritonModel(
            settings.triton_url,
            settings.triton_model,
            settings.triton_batch_tiles,
            settings.triton_timeout_s,
        ),
        monitor=DefectRateMonitor(settings, redis_client),
    )
