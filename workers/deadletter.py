"""Dead letters: jobs whose message kept coming back (a worker died on it every time).

Such a job is moved to ``failed`` with ``error.code = "poison_message"`` and listed in two
places: the Redis list ``inspectq:deadletter`` (newest first, for a quick look) and the
durable ``deadletter/<id>.json`` in S3 (what the commands below read).

Ops commands::

    python -m workers.deadletter list             # one JSON line per dead job
    python -m workers.deadletter replay JOB_ID    # reopen the job and queue it again
    python -m workers.deadletter replay --all
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from celery import Celery

from inspectq.config import Settings
from inspectq.jobs import JobError, JobRecord, utc_now
from inspectq.queue import enqueue_inspection

if TYPE_CHECKING:
    from workers.services import Services

DEADLETTER_LIST = "inspectq:deadletter"
DEADLETTER_PREFIX = "deadletter/"


def dead_letter(services: Services, record: JobRecord, deliveries: int) -> JobRecord:
    """Fail the job as a poison message and file it where ops look."""
    message = (f"delivered {deliveries} times without finishing (max_deliveries="
               f"{services.settings.max_deliveries}); the worker likely crashed on it")
    final = services.jobs.finish(record.id, error=JobError(code="poison_message",
                                                           message=message))
    entry = {"id": record.id, "line": record.line, "tenant": record.tenant,
             "deliveries": deliveries, "reason": message, "dead_at": utc_now()}
    services.store.put_json(DEADLETTER_PREFIX + record.id + ".json", entry)
    pipe = services.redis.pipeline()
    pipe.lrem(DEADLETTER_LIST, 0, record.id)
    pipe.lpush(DEADLETTER_LIST, record.id)
    pipe.execute()
    return final


def list_dead(services: Services) -> list[dict[str, Any]]:
    """Every dead-lettered job, from S3 (it survives a Redis flush)."""
    entries = []
    for key in services.store.list_keys(DEADLETTER_PREFIX):
        entry = services.store.get_json(key)
        if entry is not None:
            entries.append(entry)
    return entries


def replay(services: Services, app: Celery, job_id: str) -> bool:
    """Reopen a dead-lettered job and queue it again with fresh delivery counts.

    False when the job is not dead-lettered or no longer failed.
    """
    key = DEADLETTER_PREFIX + job_id + ".json"
    if services.store.get_json(key) is None or services.jobs.reopen(job_id) is None:
        return False
    for counter in services.redis.scan_iter(f"inspectq:deliveries:{job_id}:*"):
        services.redis.delete(counter)
    services.store.delete(key)
    services.redis.lrem(DEADLETTER_LIST, 0, job_id)
    enqueue_inspection(app, job_id)
    return True


def main(argv: list[str] | None = None) -> int:
    from workers.app import create_app
    from workers.services import build_services

    parser = argparse.ArgumentParser(prog="python -m workers.deadletter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print every dead-lettered job as a JSON line")
    replay_cmd = commands.add_parser("replay", help="queue dead-lettered jobs again")
    target = replay_cmd.add_mutually_exclusive_group(required=True)
    target.add_argument("job_id", nargs="?")
    target.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)

    settings = Settings()
    services = build_services(settings)
    if args.command == "list":
        for entry in list_dead(services):
            print(json.dumps(entry))
        return 0
    app = create_app(settings)
    ids = [entry["id"] for entry in list_dead(services)] if args.all else [args.job_id]
    failed = 0
    for job_id in ids:
        ok = replay(services, app, job_id)
        failed += not ok
        print(json.dumps({"id": job_id, "replayed": ok}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
