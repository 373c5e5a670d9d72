"""``inspectq index``: run the indexer, rebuild the results index from S3, migrate it.

The results index (``inspectq.index``) is a query copy of the job records; S3 holds the
durable ones, so the index can always be rebuilt from S3 alone.
"""

from __future__ import annotations

import json
import logging
import signal
import threading

import click

from inspectq import keyspace
from inspectq.backends import Backends
from inspectq_cli.ops import outages_as_errors
from inspectq_cli.settings import load_settings
from workers.callbacks import CallbackSender
from workers.indexer import Indexer, records_of, sync_feedback


@click.group()
def index() -> None:
    """The results index (SQL; INSPECTQ_DATABASE_URL): what GET /v1/jobs, the exports and the
    line statistics read.

    \b
    Examples:
      inspectq index run        # the indexer process (keep one running)
      inspectq index rebuild    # from S3 alone, e.g. after losing the database
      inspectq index migrate    # create or upgrade the tables
    """


@index.command()
def migrate() -> None:
    """Create or upgrade the index's tables (the indexer also does it when it starts)."""
    backends = Backends.connect(load_settings())
    with outages_as_errors():
        backends.index.migrate()
    click.echo("results index is up to date")


@index.command()
def run() -> None:
    """Keep the index in step with the jobs, and deliver job callbacks, until SIGTERM or
    SIGINT: ended jobs are indexed within a second; a database outage delays them and
    loses nothing."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    settings = load_settings()
    sender = threading.Thread(target=CallbackSender(Backends.connect(settings)).run,
                              args=(stop,), name="callbacks")
    sender.start()
    Indexer(Backends.connect(settings)).run(stop)
    sender.join()


@index.command()
def rebuild() -> None:
    """Index every job outcome stored in S3 (jobs/<id>/result.json), with a progress bar.
    Safe to run while the service runs: writes are idempotent upserts. Prints the count."""
    backends = Backends.connect(load_settings())
    batch_size = backends.index.batch_size
    total = 0
    with outages_as_errors():
        backends.index.migrate()
        job_ids = (keyspace.job_id_of_result(key)
                   for key in backends.store.iter_keys(keyspace.JOBS_PREFIX))
        batch: list[str] = []
        with click.progressbar(length=0, label="indexing", show_pos=True) as bar:
            for job_id in job_ids:
                if job_id is None:
                    continue
                batch.append(job_id)
                if len(batch) == batch_size:
                    total += _index(backends, batch, bar)
                    batch = []
            total += _index(backends, batch, bar)
    click.echo(json.dumps({"indexed": total}))


def _index(backends: Backends, job_ids: list[str], bar: object) -> int:
    records = records_of(backends, job_ids)
    written = backends.index.upsert(records) if records else 0
    sync_feedback(backends, records)  # callbacks of old jobs are not sent again
    bar.update(len(job_ids))  # type: ignore[attr-defined]
    return written
