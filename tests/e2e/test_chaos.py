"""The promise under faults, in every test run: a short `make chaos` (300 images; a pool
process and the whole worker SIGKILLed, Triton restarted, Redis flushed with clients
polling, an unreadable record in `pending/`) ends with every job done or visibly failed,
none lost, none duplicated."""

from __future__ import annotations

from pathlib import Path

import redis

from devstack import chaos
from devstack.stack import down, up


def test_a_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    config = chaos.stack_config(tmp_path / "chaos")
    redis.Redis.from_url(config.settings.redis_url).flushdb()
    up(config)
    try:
        report, held = chaos.run(config, images=300, clients=8, deadline_s=300)
    finally:
        down(config)
    assert held, report
    assert "lost                0" in report and "duplicated results  0" in report, report
