"""``inspectq alerts``: a line's alerting configuration, as ``GET/PUT
/v1/lines/<line>/alerting`` has it (stored in the results index; the workers' Redis copy is
replaced at once)."""

from __future__ import annotations

import json
import re
from typing import Any

import click
from pydantic import ValidationError

from inspectq.alerting import LineAlerting, check_line, describe
from inspectq.backends import Backends
from inspectq.index.alerts import AlertIndex, LineAlertingStore
from inspectq.queue import make_celery, request_alert_sweep
from inspectq_cli.ops import outages_as_errors
from inspectq_cli.settings import load_settings

_LINE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LISTS = ("rates", "channels")


def _value(key: str, text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, objects), else the
    short forms: ``reject,review`` for a list, ``22:00-06:00`` for quiet hours."""
    if key == "quiet_hours" and re.fullmatch(r"\d\d:\d\d-\d\d:\d\d", text):
        start, end = text.split("-")
        return {"start": start, "end": end}
    try:
        return json.loads(text)
    except ValueError:
        pass
    if key in _LISTS:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def apply(config: LineAlerting, assignments: tuple[str, ...]) -> LineAlerting:
    """``config`` with each ``key=value`` applied (``key=`` removes the override;
    ``prior_rates.reject=0.05`` sets one prior). ValueError for a malformed one."""
    data = config.overrides()
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {assignment!r}: expected key=value")
        field, _, sub = key.partition(".")
        if field not in LineAlerting.model_fields:
            raise ValueError(f"unknown setting {field!r}; one of: "
                             f"{', '.join(LineAlerting.model_fields)}")
        if sub:
            if field != "prior_rates":
                raise ValueError(f"{field} has no parts")
            priors = dict(data.get("prior_rates") or {})
            if text == "":
                priors.pop(sub, None)
            else:
                priors[sub] = _value(field, text)
            data["prior_rates"] = priors or None
        elif text == "":
            data.pop(field, None)
        else:
            data[field] = _value(field, text)
    return LineAlerting.model_validate(data)


@click.group()
def alerts() -> None:
    """Line health alerts (see "Line health alerts" in README.md).

    \b
    Examples:
      inspectq alerts config L3
      inspectq alerts config L3 --set false_alarms_per_week=0.2 --set channels=slack,email
      inspectq alerts config L3 --set quiet_hours=22:00-06:00 --set prior_rates.reject=0.05
      inspectq alerts config L3 --set quiet_hours=       # back to the global default
    """


@alerts.command("config")
@click.argument("line")
@click.option("--tenant", default="default", show_default=True)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override one setting of this line (repeatable); KEY= removes it.")
def config_command(line: str, tenant: str, assignments: tuple[str, ...]) -> None:
    """Show LINE's alerting configuration (overrides, what is in effect, the channels), or
    change it with --set. Prints JSON."""
    if not _LINE.fullmatch(line):
        raise click.BadParameter("line names match [A-Za-z0-9._-]{1,64}", param_hint="LINE")
    backends = Backends.connect(load_settings())
    index = AlertIndex(backends.index)
    with outages_as_errors():
        config = index.line_config(tenant, line)
        if assignments:
            try:
                config = apply(config, assignments)
                check_line(backends.settings, config)
            except (ValueError, ValidationError) as error:
                raise click.ClickException(str(error)) from error
            LineAlertingStore(index, backends.redis).put(tenant, line, config)
    click.echo(json.dumps(describe(backends.settings, line, config), indent=2))


@alerts.command("sweep")
def sweep_command() -> None:
    """Ask a worker to hand on alert events whose messages were lost or are late (Celery
    beat does it every INSPECTQ_RECONCILE_INTERVAL_S; on Kubernetes a CronJob runs this)."""
    settings = load_settings()
    with outages_as_errors():
        request_alert_sweep(make_celery(settings))
    click.echo("alert sweep queued")
