"""``inspectq``: the one console script (``[project.scripts]`` in pyproject.toml).

Each command's module is imported only when that command runs, because the environments
differ: the model environment (torch, no Flask) runs ``inspectq model``, a client-only install
(``inspectq[client]``) runs ``submit``/``wait``/``results``/``feedback``, and the service
environment runs everything. A command whose dependencies are missing says which environment
it needs instead of breaking the others.
"""

from __future__ import annotations

import importlib

import click

#: command name -> "module:attribute" of its click command, in the order of ``--help``.
COMMANDS = {
    "submit": "inspectq_cli.client:submit",
    "wait": "inspectq_cli.client:wait",
    "results": "inspectq_cli.client:results",
    "feedback": "inspectq_cli.client:feedback",
    "keys": "inspectq_cli.keys:keys",
    "model": "inspectq_cli.model:model",
    "index": "inspectq_cli.index:index",
    "callbacks": "inspectq_cli.callbacks:callbacks",
    "alerts": "inspectq_cli.alerts:alerts",
    "dataset": "inspectq_cli.dataset:dataset",
    "deadletter": "inspectq_cli.ops:deadletter",
    "reconcile": "inspectq_cli.ops:reconcile",
}


class MissingDependency(click.ClickException):
    """A command whose module cannot be imported in this environment."""


class LazyGroup(click.Group):
    """A group that imports a command's module on first use (see the module docstring)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            raise MissingDependency(
                f"`inspectq {cmd_name}` needs the Python package {error.name!r}, which this "
                "environment lacks: use the service environment (.venv, `make venv`)"
                + (" or the model environment (.venv-model)" if cmd_name == "model" else "")
            ) from error
        command: click.Command = getattr(module, attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List every command; one this environment cannot import says so instead of
        breaking ``--help``."""
        rows = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
            except MissingDependency:
                rows.append((name, "(not available in this environment)"))
                continue
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    cli(prog_name="inspectq")
