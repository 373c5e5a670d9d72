"""Reading ``Settings`` for a command, with a clear message instead of a traceback."""

from __future__ import annotations

import click
from pydantic import ValidationError

from inspectq.config import Settings


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"INSPECTQ_{'_'.join(str(p) for p in e['loc']).upper() or '*'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise click.ClickException(f"invalid settings: {problems}") from error
