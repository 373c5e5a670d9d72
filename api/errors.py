"""Every error a client can hit is JSON ``{"error": {"code", "message"}}`` with a status that
means what it says. Views raise :class:`ApiError`; the handlers here render it and translate
the exceptions of the libraries underneath (Werkzeug, S3, Redis, the broker).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, g, jsonify
from kombu.exceptions import OperationalError as BrokerError
from werkzeug.exceptions import HTTPException

from inspectq.index import IndexUnavailable
from inspectq.storage import StorageUnavailable

log = logging.getLogger(__name__)

#: Seconds a client is told to wait after a 503 from a dependency outage.
OUTAGE_RETRY_AFTER_S = 5


class ApiError(Exception):
    """A failure with a status, a stable machine-readable ``code`` and a human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details


def error_response(error: ApiError) -> Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    g.error_code = error.code  # counted by api.metrics as a rejection reason
    response = jsonify({"error": body})
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def unavailable(what: str) -> ApiError:
    """A 503 for an outage of ``what``; the cause goes to the log, never to the client."""
    return ApiError(
        503,
        f"{what}_unavailable",
        f"The {what} service is unreachable; nothing was accepted. Retry later.",
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
    )


# Codes for the Werkzeug errors a client can cause before any view runs.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        # Keep headers such as Allow (405) that Werkzeug computed for the error.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        message = error.description or error.name
        return error_response(
            ApiError(status, _HTTP_CODES.get(status, "http_error"), message, headers=headers)
        )

    @app.errorhandler(StorageUnavailable)
    def _storage_down(error: StorageUnavailable) -> Response:
        log.warning("S3 unavailable: %s", error)
        return error_response(unavailable("storage"))

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _redis_down(error: redis.exceptions.RedisError) -> Response:
        log.warning("Redis unavailable: %s", error)
        return error_response(unavailable("queue"))

    @app.errorhandler(IndexUnavailable)
    def _index_down(error: IndexUnavailable) -> Response:
        log.warning("Results index unavailable: %s", error)
        return error_response(ApiError(
            503, "index_unavailable", "The results index is unreachable; ingest and job"
            " status still work. Retry later.",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)}))

    @app.errorhandler(BrokerError)
    def _broker_down(error: BrokerError) -> Response:
        log.warning("Broker unavailable: %s", error)
        return error_response(unavailable("queue"))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("Unhandled error")
        return error_response(ApiError(500, "internal_error", "Internal server error."))
