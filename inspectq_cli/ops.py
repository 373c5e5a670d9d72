"""``inspectq deadletter`` and ``inspectq reconcile``: the job-recovery commands.

They talk to S3 and Redis with the deployment's settings and send to the queue by task
name (``inspectq.queue``); they never build the worker app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import click
import redis
from kombu.exceptions import OperationalError

from inspectq.backends import Backends
from inspectq.index import IndexUnavailable
from inspectq.queue import make_celery
from inspectq.storage import StorageUnavailable
from inspectq_cli.settings import load_settings
from workers import deadletter as dead_letters
from workers.reconcile import reconcile as reconcile_once


@contextmanager
def outages_as_errors() -> Iterator[None]:
    """An unreachable S3, Redis, broker or results index ends the command with one line,
    not a traceback."""
    try:
        yield
    except IndexUnavailable as error:
        raise click.ClickException(str(error)) from error
    except StorageUnavailable as error:
        raise click.ClickException(f"S3 is unreachable: {error}") from error
    except (redis.ConnectionError, redis.TimeoutError, OperationalError) as error:
        raise click.ClickException(f"Redis (or the broker) is unreachable: {error}") from error


@click.group()
def deadletter() -> None:
    """Jobs failed as poison_message: their message came back max_deliveries times.

    \b
    Examples:
      inspectq deadletter list
      inspectq deadletter replay j_0123456789abcdefghijkl
      inspectq deadletter replay --all
    """


@deadletter.command("list")
def list_dead() -> None:
    """Print every dead-lettered job as one JSON line (read from S3).

    \b
    Example:
      inspectq deadletter list
    """
    with outages_as_errors():
        for entry in dead_letters.list_dead(Backends.connect(load_settings())):
            click.echo(json.dumps(entry))


@deadletter.command("replay")
@click.argument("job_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead-lettered job.")
def replay(job_id: str | None, replay_all: bool) -> None:
    """Reopen a dead-lettered job (or --all) and queue it again with fresh delivery counts.
    Prints {"id", "replayed"} per job; exit status 1 if any could not be replayed.

    \b
    Example:
      inspectq deadletter replay j_0123456789abcdefghijkl
    """
    if (job_id is None) == (not replay_all):
        raise click.UsageError("give one JOB_ID or --all")
    settings = load_settings()
    failed = 0
    with outages_as_errors():
        backends = Backends.connect(settings)
        queue = make_celery(settings)
        ids = [entry["id"] for entry in dead_letters.list_dead(backends)] if replay_all else [
            job_id]
        for one in ids:
            ok = dead_letters.replay(backends, queue, str(one))
            failed += not ok
            click.echo(json.dumps({"id": one, "replayed": ok}))
    if failed:
        raise SystemExit(1)


@click.command()
def reconcile() -> None:
    """Run the reconciler once: requeue accepted jobs whose message was lost, sweep the
    pending entries of finished jobs. Prints its counts as one JSON line. Celery beat (or
    the Kubernetes CronJob) runs it every INSPECTQ_RECONCILE_INTERVAL_S.

    \b
    Example:
      inspectq reconcile
    """
    settings = load_settings()
    with outages_as_errors():
        report = reconcile_once(Backends.connect(settings), make_celery(settings))
    click.echo(json.dumps({**report.counts(), "requeued_ids": report.requeued}))
