"""The web dashboard: static files (``api/dashboard/``: plain ES modules, no build step)
served at ``/dashboard/`` by the API itself.

The page holds no data and needs no key to load: it signs in with an API key kept in the
browser's sessionStorage and calls ``/v1`` with it as a bearer header, like any client.
Every answer carries a strict Content-Security-Policy: scripts, styles and fetches from
this origin only, no inline script, images from here or from blob URLs (the overlays are
fetched with the key and shown as blobs).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent / "dashboard"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def dashboard_blueprint() -> Blueprint:
    bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

    @bp.get("")
    def to_index() -> Response:
        return redirect("/dashboard/", code=308)

    @bp.get("/")
    def index() -> Response:
        return _static("index.html")

    @bp.get("/<path:name>")
    def static_file(name: str) -> Response:
        return _static(name)

    @bp.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response

    return bp


def _static(name: str) -> Response:
    response = send_from_directory(STATIC_DIR, name, max_age=0)
    if name.endswith(".js"):  # ES modules need a JavaScript type whatever the OS's mimetypes
        response.mimetype = "text/javascript"
    return response
