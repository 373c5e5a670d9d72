"""A worker app for fault-injection tests: ``celery -A tests.workers.paused_worker worker``.

The real worker app (``workers.app.create_app``), with one test-only change: right after a
job's outcome is written (stage 8, ``record_result``), the task touches the file named by
``INSPECTQ_TEST_PAUSED_FILE`` and sleeps, before it returns and its message is acked. A
test kills the worker there: the one moment where the outcome is durable but the broker
still holds the message.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from inspectq.config import Settings
from inspectq.jobs import JobRecord
from workers import tasks
from workers.app import create_app

PAUSE_S = 60.0
_record_result = tasks.record_result


def _record_then_pause(*args: object, **kwargs: object) -> JobRecord:
    outcome = _record_result(*args, **kwargs)
    Path(os.environ["INSPECTQ_TEST_PAUSED_FILE"]).touch()
    time.sleep(PAUSE_S)
    return outcome


tasks.record_result = _record_then_pause
app = create_app(Settings())
