"""JSON for the errors gunicorn answers itself, before the app sees the request.

gunicorn refuses a request line over ``limit_request_line`` (414), too many or too large
headers (431) and malformed requests (400) with an HTML page of its own. Every error a client
can hit is JSON here (``{"error": {"code", "message"}}``, like ``api.errors``), so
``api/gunicorn.conf.py`` installs :func:`write_json_error` in place of gunicorn's
``util.write_error``, which is the one function all of those answers go through.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Same contract as ``gunicorn.util.write_error``: write one whole HTTP error response."""
    body = json.dumps({"error": {
        "code": _CODES.get(status_int, "http_error"),
        "message": f"{reason}: {mesg}" if mesg else reason,
    }}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    util.write_error = write_json_error
