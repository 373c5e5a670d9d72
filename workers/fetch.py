"""Stage 2: fetch the image bytes from S3 (the message only carries the job id)."""

from __future__ import annotations

from inspectq.storage import ObjectStore


class ImageMissing(Exception):
    """The job's image is not in S3: nothing to inspect, retrying will not help."""


def fetch_image(store: ObjectStore, key: str) -> bytes:
    """The image bytes at ``key``.

    Raises :class:`ImageMissing` when the key does not exist, and lets
    :class:`inspectq.storage.StorageUnavailable` through when S3 cannot be reached (retried).
    """
    body = store.get(key)
    if body is None:
        raise ImageMissing(f"no image at {key}")
    return body
