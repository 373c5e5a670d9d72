"""``inspectq``: the one console script (``[project.scripts]`` in pyproject.toml)."""

from __future__ import annotations

import click

from inspectq_cli.alerts import alerts
from inspectq_cli.callbacks import callbacks
from inspectq_cli.client import feedback, results, submit, wait
from inspectq_cli.dataset import dataset
from inspectq_cli.index import index
from inspectq_cli.keys import keys
from inspectq_cli.model import model
from inspectq_cli.ops import deadletter, reconcile


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inspectq")
def cli() -> None:
    """inspectq: visual defect inspection at factory scale.

    Settings come from the INSPECTQ_* environment variables (see README.md), as for the
    API and the workers.

    \b
    Examples:
      inspectq keys add --tenant acme --file api-keys.json
      inspectq deadletter list
      inspectq reconcile
      inspectq model list
      inspectq index rebuild
    """


cli.add_command(keys)
cli.add_command(deadletter)
cli.add_command(reconcile)
cli.add_command(model)
cli.add_command(submit)
cli.add_command(wait)
cli.add_command(results)
cli.add_command(feedback)
cli.add_command(index)
cli.add_command(callbacks)
cli.add_command(alerts)
cli.add_command(dataset)


def main() -> None:
    cli(prog_name="inspectq")
