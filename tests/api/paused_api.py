"""An API app for fault-injection tests: ``gunicorn "tests.api.paused_api:create_app()"``.

The real app (``api.app.create_app``), with one test-only change: at the ingest step named by
``INSPECTQ_TEST_PAUSE_AT`` the request touches the file ``INSPECTQ_TEST_PAUSED_FILE`` and
sleeps, so a test can SIGKILL the process exactly there:

* ``after_claim``: image stored and Idempotency-Key claimed, no job record yet;
* ``after_record``: job recorded (S3 ``pending/``, Redis), not yet enqueued.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flask import Flask

from api import app as api_app
from api import idempotency, ingest

PAUSE_S = 60.0


def _pause() -> None:
    Path(os.environ["INSPECTQ_TEST_PAUSED_FILE"]).touch()
    time.sleep(PAUSE_S)


def create_app() -> Flask:
    where = os.environ["INSPECTQ_TEST_PAUSE_AT"]
    if where == "after_claim":
        real_claim = idempotency.IdempotencyClaims.claim

        def claim_then_pause(self: Any, *args: Any) -> idempotency.Claim:
            won = real_claim(self, *args)
            _pause()
            return won

        idempotency.IdempotencyClaims.claim = claim_then_pause  # type: ignore[method-assign]
    elif where == "after_record":
        real_enqueue = ingest.enqueue_inspection

        def pause_then_enqueue(*args: Any, **kwargs: Any) -> None:
            _pause()
            real_enqueue(*args, **kwargs)

        ingest.enqueue_inspection = pause_then_enqueue
    else:
        raise ValueError(f"INSPECTQ_TEST_PAUSE_AT={where!r}")
    return api_app.create_app()
