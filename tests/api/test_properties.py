"""Property-based tests (hypothesis) of image validation and request parsing."""

from __future__ import annotations

import io
import json
import math
import random
import re
import struct
import urllib.parse

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from api.errors import ApiError
from api.images import validate_image
from api.schemas import NAME_PATTERN, JobOptions
from tests.api.conftest import AUTH

MODES = {
    "JPEG": ["L", "RGB", "CMYK"],
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "RGB", "RGBA", "I;16", "CMYK"],
}  # floating-point TIFFs (mode F) are refused: the workers cannot read them (test_images.py)
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp",
                 "TIFF": "image/tiff"}


def noise(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic noisy RGB image (hypothesis needs reproducible data)."""
    pixels = random.Random(seed).randbytes(width * height * 3)
    return Image.frombytes("RGB", (width, height), pixels)


@st.composite
def images(draw: st.DrawFn) -> tuple[bytes, str, int, int]:
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    buffer = io.BytesIO()
    image = noise(width, height, draw(st.integers(0, 2**16))).convert(mode)
    image.save(buffer, fmt)
    return buffer.getvalue(), fmt, width, height


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_with_a_4xx_or_accepted(data: bytes) -> None:
    try:
        validate_image(data, 10_000)
    except ApiError as error:
        assert 400 <= error.status < 500 and error.code and error.message


@given(images())
def test_every_supported_format_and_mode_is_accepted(case: tuple[bytes, str, int, int]) -> None:
    data, fmt, width, height = case
    accepted = validate_image(data, 48 * 48)
    assert (accepted.width, accepted.height) == (width, height)
    assert accepted.content_type == CONTENT_TYPES[fmt]


@given(images(), st.integers(1, 48 * 48))
def test_pixel_limit_is_exact(case: tuple[bytes, str, int, int], max_pixels: int) -> None:
    data, _, width, height = case
    if width * height <= max_pixels:
        validate_image(data, max_pixels)
    else:
        with pytest.raises(ApiError) as refused:
            validate_image(data, max_pixels)
        assert (refused.value.status, refused.value.code) == (413, "too_many_pixels")


def _idat_span(png: bytes) -> tuple[int, int]:
    """(start, end) offsets of the pixel data of the first to the last IDAT chunk."""
    offset, start, end = 8, None, None
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            start = offset + 8 if start is None else start
            end = offset + 8 + length
        offset += 12 + length
    assert start is not None and end is not None
    return start, end


@given(st.integers(8, 64), st.integers(8, 64), st.integers(0, 2**16), st.data())
def test_a_png_cut_inside_its_pixel_data_is_refused(
    width: int, height: int, seed: int, data: st.DataObject
) -> None:
    buffer = io.BytesIO()
    noise(width, height, seed).save(buffer, "PNG")
    png = buffer.getvalue()
    start, end = _idat_span(png)
    cut = data.draw(st.integers(start, end - 1))
    with pytest.raises(ApiError) as refused:
        validate_image(png[:cut], 10_000)
    assert refused.value.status == 400


@given(st.text(max_size=80))
def test_line_ids_are_accepted_exactly_when_they_match_the_pattern(line: str) -> None:
    matches = re.fullmatch(NAME_PATTERN[1:-1], line) is not None
    try:
        options = JobOptions.model_validate({"line": line})
    except ValidationError:
        assert not matches
    else:
        assert matches and options.line == line


finite_or_not = st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1)


@given(finite_or_not, finite_or_not)
def test_thresholds_are_accepted_exactly_when_valid(pass_t: float, reject_t: float) -> None:
    def in_range(x: float) -> bool:
        return math.isfinite(x) and 0 <= x <= 1

    try:
        options = JobOptions.model_validate(
            {"pass_threshold": str(pass_t), "reject_threshold": str(reject_t)}
        )
    except ValidationError:
        assert not (in_range(pass_t) and in_range(reject_t))
        return
    assert in_range(pass_t) and in_range(reject_t)
    try:
        assert options.thresholds(0.4, 0.65) == (pass_t, reject_t)
    except ValueError:
        assert not pass_t < reject_t
    else:
        assert pass_t < reject_t


json_values = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_metadata_must_be_a_json_object(value: object) -> None:
    text = json.dumps(value)
    assume(len(text) <= 16 * 1024)
    try:
        options = JobOptions.model_validate({"metadata": text})
    except ValidationError:
        assert not isinstance(value, dict)
    else:
        assert isinstance(value, dict) and options.metadata_object() == value


@given(st.text(max_size=300))
def test_metadata_text_is_an_object_or_refused(text: str) -> None:
    try:
        options = JobOptions.model_validate({"metadata": text})
    except ValidationError:
        return
    assert isinstance(options.metadata_object(), dict)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.text(max_size=70))
def test_http_line_ids(client: FlaskClient, line: str) -> None:
    """Over HTTP: a raw upload is accepted exactly when its line id matches the pattern."""
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG")
    query = urllib.parse.urlencode({"line": line})
    response = client.post(f"/v1/jobs?{query}", data=buffer.getvalue(),
                           headers={**AUTH, "Content-Type": "image/png"})
    if re.fullmatch(NAME_PATTERN[1:-1], line):
        assert response.status_code == 202, response.json
    else:
        assert response.status_code == 400
        assert response.json["error"]["code"] == "invalid_request"
