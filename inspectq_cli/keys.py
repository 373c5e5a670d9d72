"""``inspectq keys``: API keys for tenants (only their sha256 is stored)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from api.apikeys import add_key, new_signing_secret, read_keys, revoke_key
from inspectq_cli.settings import load_settings


def _keys_file(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path:
    if value is not None:
        return value
    configured = load_settings().api_keys_file
    if not configured:
        raise click.UsageError("no keys file: pass --file or set INSPECTQ_API_KEYS_FILE")
    return Path(configured)


def _file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--file", "keys_file", type=click.Path(dir_okay=False, path_type=Path),
        callback=_keys_file, help="The keys file (default: INSPECTQ_API_KEYS_FILE).",
    )(command)


@click.group()
def keys() -> None:
    """Create, list and revoke API keys. The API re-reads the keys file when it changes,
    so a new or revoked key takes effect without a restart.

    \b
    Example:
      inspectq keys add --tenant acme --file api-keys.json
    """


@keys.command("add")
@click.option("--tenant", required=True, help="Tenant the key belongs to ([a-z0-9_-]).")
@_file_option
def add(tenant: str, keys_file: Path) -> None:
    """Create a key for a tenant and print "<id> <tenant> <key>" once. The tenant's first
    key also creates its callback signing secret, printed once on stderr.

    \b
    Example:
      inspectq keys add --tenant acme --file api-keys.json
    """
    try:
        plain, entry = add_key(keys_file, tenant)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--tenant") from error
    click.echo(f"{entry.id}\t{entry.tenant}\t{plain}")
    click.echo("Store this key now: it is not shown again.", err=True)
    secret = new_signing_secret(keys_file, tenant)
    if secret is not None:
        click.echo(f"Callback signing secret of {tenant} (verify X-Inspectq-Signature with it;"
                   f" not shown again): {secret}", err=True)


@keys.command("rotate-secret")
@click.option("--tenant", required=True, help="Tenant whose signing secret is replaced.")
@_file_option
def rotate_secret(tenant: str, keys_file: Path) -> None:
    """Replace a tenant's callback signing secret and print the new one once. Callbacks
    sent from then on use it: update the receivers first.

    \b
    Example:
      inspectq keys rotate-secret --tenant acme --file api-keys.json
    """
    click.echo(new_signing_secret(keys_file, tenant, replace=True))


@keys.command("list")
@_file_option
def list_keys(keys_file: Path) -> None:
    """List key ids, tenants and creation times (never the keys).

    \b
    Example:
      inspectq keys list --file api-keys.json
    """
    for key in read_keys(keys_file):
        click.echo(f"{key.id}\t{key.tenant}\t{key.created_at}")


@keys.command("revoke")
@click.argument("key_id")
@_file_option
def revoke(key_id: str, keys_file: Path) -> None:
    """Remove the key KEY_ID (exit status 1 when there is none).

    \b
    Example:
      inspectq keys revoke k_0123456789ab --file api-keys.json
    """
    if not revoke_key(keys_file, key_id):
        click.echo(f"no key with id {key_id}", err=True)
        raise SystemExit(1)
    click.echo(f"revoked {key_id}")
