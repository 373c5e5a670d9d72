"""Entry module of the worker command line: builds the app from the environment.

    REMAP_SIGTERM=SIGQUIT celery -A workers.main worker -Q inspectq -O fair --concurrency 2 -l INFO
    celery -A workers.main beat -l INFO        # one per deployment: runs the reconciler

Importing this module reads ``Settings()`` from ``INSPECTQ_*``; nothing else imports it.
"""

from __future__ import annotations

from inspectq.config import Settings
from workers.app import create_app

app = create_app(Settings())
