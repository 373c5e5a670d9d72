"""Checks every /v1 request's URL gets before its route runs."""

from __future__ import annotations

from flask import request

from api.errors import ApiError


def refuse_nul_in_url() -> None:
    """``before_request`` hook: no id, name, filter or cursor ever holds U+0000, and
    PostgreSQL text cannot store or compare one, so a NUL anywhere in the path or the query
    (``%00``) is a 400 naming it, for every route at once, instead of a database error."""
    query = request.args.items(multi=True)
    if "\x00" in request.path or any("\x00" in key + value for key, value in query):
        raise ApiError(400, "invalid_request",
                       "The URL holds a NUL character (%00); no id, name or filter does.")
