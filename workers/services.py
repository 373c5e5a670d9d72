"""The clients one worker process uses, built from Settings in that process.

Nothing here connects at import time: :func:`build_services` is called on a worker's first
task (after the prefork pool forked it), so no socket or gRPC channel crosses a fork.
"""

from __future__ import annotations

from dataclasses import dataclass

from inspectq.backends import Backends
from inspectq.config import Settings
from workers.alert import LineHealth
from workers.infer import TritonModel


@dataclass(frozen=True)
class Services(Backends):
    """S3, Redis and the job records (:class:`Backends`), plus Triton and line health."""

    model: TritonModel
    line_health: LineHealth


def build_services(settings: Settings) -> Services:
    core = Backends.connect(settings)
    return Services(
        **vars(core),
        model=TritonModel(
            settings.triton_url,
            settings.triton_model,
            settings.triton_batch_tiles,
            settings.triton_timeout_s,
        ),
        line_health=LineHealth(settings, core.redis, core.index),
    )
