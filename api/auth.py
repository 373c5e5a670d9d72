"""Bearer API keys on every ``/v1`` request; the request's tenant goes to ``g.tenant``."""

from __future__ import annotations

from flask import g, request

from api.errors import ApiError
from api.services import services


def _unauthorized(message: str, error: str) -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        message,
        headers={"WWW-Authenticate": f'Bearer realm="inspectq", error="{error}"'},
    )


def bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def require_api_key() -> None:
    """``before_request`` hook: refuse the request unless it carries a known key. A CORS
    preflight (``OPTIONS``) carries none by design: it reaches no data and is answered by
    Flask (with CORS headers where ``cors_origins`` allows the origin)."""
    if request.method == "OPTIONS":
        return
    token = bearer_token()
    if token is None:
        raise _unauthorized("Send an API key as `Authorization: Bearer <key>`.", "invalid_request")
    tenant = services().keys.tenant_for(token)
    if tenant is None:
        raise _unauthorized("The API key is not valid.", "invalid_token")
    g.tenant = tenant
