"""Put accepted jobs back on the queue after Redis lost them (flushed, restarted empty).

S3 knows every accepted job without an outcome (``pending/<id>`` markers). For each one
whose Redis record is gone, the reconciler puts the record back in Redis and enqueues the
job again. A Redis ``SET NX`` guard keeps two reconcilers from enqueueing the same job in
the same visibility window; a duplicate delivery would be harmless anyway, since
``JobStore.finish`` keeps the first outcome.

Run on demand with ``python -m workers.reconcile``; Celery beat also runs it every
``reconcile_interval_s`` (see ``workers.app``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import Celery

from inspectq.config import Settings
from inspectq.jobs import JobError
from inspectq.queue import enqueue_inspection

if TYPE_CHECKING:
    from workers.services import Services

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # outcome existed; marker cleared
    live: int = 0  # Redis still knows them: the normal path will finish them

    def counts(self) -> dict[str, int]:
        return {"requeued": len(self.requeued), "closed": len(self.closed), "live": self.live}


def reconcile(services: Services, app: Celery) -> ReconcileReport:
    report = ReconcileReport()
    jobs = services.jobs
    for job_id in jobs.pending_job_ids():
        if jobs.is_cached(job_id):
            report.live += 1
            continue
        record = jobs.get(job_id)  # reads S3 and puts the record back in Redis
        if record is None:
            log.error("pending marker for %s but no job record in S3", job_id)
            continue
        if record.status.terminal:
            # The outcome was written but the process died before clearing the marker.
            # finish() keeps that first outcome and clears the marker.
            jobs.finish(job_id, error=JobError(code="reconciled", message="unused"))
            report.closed.append(job_id)
            continue
        guard = f"inspectq:requeued:{job_id}"
        if services.redis.set(guard, 1, nx=True, ex=services.settings.visibility_timeout_s):
            enqueue_inspection(app, job_id)
            report.requeued.append(job_id)
    if report.requeued or report.closed:
        log.warning("reconciler: %s", report.counts())
    return report


def main() -> int:
    from workers.app import create_app
    from workers.services import build_services

    settings = Settings()
    report = reconcile(build_services(settings), create_app(settings))
    print(json.dumps({**report.counts(), "requeued_ids": report.requeued}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
