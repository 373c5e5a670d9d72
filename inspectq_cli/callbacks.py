"""``inspectq callbacks``: subscribe URLs to a tenant's results, and replay deliveries."""

from __future__ import annotations

import json
from datetime import datetime

import click

from inspectq.backends import Backends
from inspectq.callbacks import CallbackUrlError, check_callback_url
from inspectq.index.outbox import Outbox
from inspectq_cli.ops import outages_as_errors
from inspectq_cli.settings import load_settings


def _outbox() -> tuple[Outbox, Backends]:
    backends = Backends.connect(load_settings())
    return Outbox(backends.index, backends.settings.callback_retry_hours), backends


@click.group()
def callbacks() -> None:
    """Job callbacks: every ended job of a tenant (or of one line) POSTed to a URL, signed
    with the tenant's secret (X-Inspectq-Signature); a job's own callback_url is called
    too. Deliveries are retried with backoff for INSPECTQ_CALLBACK_RETRY_HOURS.

    \b
    Examples:
      inspectq callbacks add --tenant acme https://mes.example/inspectq
      inspectq callbacks add --tenant acme --line L3 https://line3.example/hook
      inspectq callbacks list
      inspectq callbacks replay --job j_...
    """


@callbacks.command("add")
@click.option("--tenant", required=True)
@click.option("--line", default=None, help="Only this line's jobs (default: all lines).")
@click.argument("url")
def add(tenant: str, line: str | None, url: str) -> None:
    """Subscribe URL to the tenant's results; prints the subscription's id."""
    outbox, backends = _outbox()
    try:
        check_callback_url(url, backends.settings.callback_allow_private)
    except CallbackUrlError as error:
        raise click.BadParameter(str(error), param_hint="URL") from error
    with outages_as_errors():
        backends.index.migrate()
        click.echo(outbox.subscribe(tenant, url, line))


@callbacks.command("list")
@click.option("--tenant", default=None)
def list_subscriptions(tenant: str | None) -> None:
    """The subscriptions, one JSON object per line."""
    outbox, _ = _outbox()
    with outages_as_errors():
        for subscription in outbox.subscriptions(tenant):
            click.echo(json.dumps(subscription))


@callbacks.command("remove")
@click.argument("subscription_id")
def remove(subscription_id: str) -> None:
    """End a subscription (exit status 1 when there is none)."""
    outbox, _ = _outbox()
    with outages_as_errors():
        if not outbox.unsubscribe(subscription_id):
            click.echo(f"no subscription {subscription_id}", err=True)
            raise SystemExit(1)
    click.echo(f"removed {subscription_id}")


@callbacks.command("replay")
@click.option("--tenant", default=None)
@click.option("--job", "job_id", default=None, help="Only this job's deliveries.")
@click.option("--since", type=click.DateTime(), default=None,
              help="Only deliveries created since (UTC).")
@click.option("--all", "everything", is_flag=True,
              help="Delivered ones too (default: only those that gave up).")
def replay(tenant: str | None, job_id: str | None, since: datetime | None,
           everything: bool) -> None:
    """Send deliveries again from now, with a fresh retry horizon; prints the count."""
    outbox, _ = _outbox()
    with outages_as_errors():
        count = outbox.replay(tenant=tenant, job_id=job_id, since=since,
                              failed_only=not everything)
    click.echo(json.dumps({"replayed": count}))
