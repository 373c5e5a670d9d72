"""The one exception the API's answers raise: :class:`ApiError`."""

from __future__ import annotations

from typing import Any

import requests


class ApiError(Exception):
    """The API refused a request (any 4xx or 5xx that retrying did not cure).

    ``code`` and ``message`` come from the API's JSON error body
    ``{"error": {"code", "message", "details"?}}`` (``code`` is stable and machine-readable:
    ``unauthorized``, ``job_not_found``, ``rate_limited``, ``invalid_request``, ...). An answer
    without that body (a proxy's HTML page) gets the code ``http_error`` and the start of its
    text as the message.
    """

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["code"]), str(error["message"]),
                       error.get("details"))
        except (ValueError, KeyError, TypeError):
            text = response.text.strip()[:200] or response.reason or "no answer body"
            return cls(response.status_code, "http_error", text)
