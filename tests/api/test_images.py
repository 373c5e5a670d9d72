"""Ingest validation (``api.images.validate_image``) called directly: pixel types the workers
cannot decode are refused at the door (415), instead of accepted with 202 and then failed as
``undecodable_image``; everything the workers decode is accepted."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from api.errors import ApiError
from api.images import validate_image
from inspectq.imaging import UndecodableImage, decode_image

MAX_PIXELS = 40_000_000


def _pillow(mode: str, fmt: str, value: float | tuple[int, ...] = 7) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (8, 6), value).save(buffer, fmt)
    return buffer.getvalue()


def _opencv(ext: str, array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, array)
    assert ok
    return data.tobytes()


#: Files the workers cannot decode, and the Pillow mode the refusal names.
REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "float32-tiff": (lambda: _opencv(".tiff", np.full((6, 8), 0.5, np.float32)), "mode F"),
    "pillow-float-tiff": (lambda: _pillow("F", "TIFF", 0.5), "mode F"),
    "int32-tiff": (lambda: _opencv(".tiff", np.full((6, 8), 5, np.int32)), "mode I"),
    "pillow-int32-tiff": (lambda: _pillow("I", "TIFF", 4000), "mode I"),
    "signed-int16-tiff": (lambda: _opencv(".tiff", np.full((6, 8), 5, np.int16)), "mode I"),
    "signed-int8-tiff": (lambda: _opencv(".tiff", np.full((6, 8), 5, np.int8)), "mode L"),
}

#: Files the workers decode: every mode of every accepted format they meet in practice.
DECODABLE: dict[str, Callable[[], bytes]] = {
    "rgb-jpeg": lambda: _pillow("RGB", "JPEG", (10, 20, 30)),
    "grey-jpeg": lambda: _pillow("L", "JPEG"),
    "cmyk-jpeg": lambda: _pillow("CMYK", "JPEG", (0, 0, 0, 0)),
    "rgb-png": lambda: _pillow("RGB", "PNG", (10, 20, 30)),
    "rgba-png": lambda: _pillow("RGBA", "PNG", (10, 20, 30, 0)),
    "grey-alpha-png": lambda: _pillow("LA", "PNG", (7, 3)),
    "palette-png": lambda: _pillow("P", "PNG"),
    "one-bit-png": lambda: _pillow("1", "PNG", 1),
    "grey16-png": lambda: _pillow("I;16", "PNG", 4000),
    "rgb16-png": lambda: _opencv(".png", np.full((6, 8, 3), 3000, np.uint16)),
    "rgba16-png": lambda: _opencv(".png", np.full((6, 8, 4), 3000, np.uint16)),
    "rgb-bmp": lambda: _pillow("RGB", "BMP", (10, 20, 30)),
    "grey-tiff": lambda: _pillow("L", "TIFF"),
    "grey16-tiff": lambda: _pillow("I;16", "TIFF", 4000),
    "grey16-big-endian-tiff": lambda: _pillow("I;16B", "TIFF", 4000),
    "rgb16-tiff": lambda: _opencv(".tiff", np.full((6, 8, 3), 3000, np.uint16)),
    "cmyk-tiff": lambda: _pillow("CMYK", "TIFF", (0, 0, 0, 0)),
}


@pytest.mark.parametrize(("make", "mode"), REFUSED.values(), ids=REFUSED.keys())
def test_pixel_types_the_workers_cannot_decode_are_refused(
    make: Callable[[], bytes], mode: str
) -> None:
    with pytest.raises(ApiError) as refused:
        validate_image(make(), MAX_PIXELS)
    assert (refused.value.status, refused.value.code) == (415, "unsupported_pixel_type")
    assert mode in refused.value.message
    assert "8 or 16-bit unsigned" in refused.value.message


def test_ingest_accepts_exactly_what_the_workers_decode() -> None:
    files = {**DECODABLE, **{name: make for name, (make, _) in REFUSED.items()}}
    disagree = {}
    for name, make in files.items():
        data = make()
        try:
            decode_image(data)
            decodable = True
        except UndecodableImage:
            decodable = False
        try:
            validate_image(data, MAX_PIXELS)
            accepted = True
        except ApiError as error:
            assert error.code == "unsupported_pixel_type", (name, error.code)
            accepted = False
        if accepted != decodable:
            disagree[name] = f"accepted={accepted} decodable={decodable}"
    assert disagree == {}
