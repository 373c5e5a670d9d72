"""Reading request bodies with a bound, before anything is held in memory.

Werkzeug enforces ``request.max_content_length``: a declared Content-Length over it is
refused with 413 before a byte is read, and a chunked body is cut off at the limit (the WSGI
server must set ``wsgi.input_terminated``, as gunicorn does). The limit is set per request
here, because a batch may be larger than one image.
"""

from __future__ import annotations

from flask import request
from werkzeug.datastructures import FileStorage

from api.errors import ApiError
from inspectq.config import Settings

#: Room for multipart boundaries, part headers and the small form fields (metadata <= 16 KiB).
FORM_OVERHEAD_BYTES = 64 * 1024


def set_body_limit(settings: Settings, images: int) -> None:
    """Allow a body of ``images`` images of at most ``max_upload_bytes`` each.

    A raw body may be one byte longer than allowed so that :func:`read_raw_body` can tell
    "exactly at the limit" from "over it": Werkzeug's stream stops silently at the limit.
    """
    if request.mimetype == "multipart/form-data":
        request.max_content_length = settings.max_upload_bytes * images + FORM_OVERHEAD_BYTES
    else:
        request.max_content_length = settings.max_upload_bytes * images + 1


def too_large(limit: int) -> ApiError:
    return ApiError(413, "image_too_large", f"An image may be at most {limit} bytes.")


def read_part(part: FileStorage, limit: int) -> bytes:
    """The bytes of one multipart file, refused past ``limit``."""
    data = part.stream.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit)
    return data


def read_raw_body(limit: int) -> bytes:
    """The raw request body (``Content-Type: image/*``), refused past ``limit``."""
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit)
    return data
