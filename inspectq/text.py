"""Free text a client sends that the results index stores (feedback notes, names of who
answered). PostgreSQL ``text`` and ``jsonb`` cannot hold U+0000, so a NUL is refused where the
text arrives, with a message naming it, rather than failing later at the database."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


#: A string without NUL characters; use it for every client-sent string that is stored.
Text = Annotated[str, AfterValidator(refuse_nul)]
