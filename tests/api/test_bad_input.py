"""Bad input: each case is a 4xx JSON error naming the problem, nothing is enqueued, and the
service stays healthy."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.api.conftest import AUTH, image_bytes, queued_job_ids, services_of, submit


def altered_pixel_data(png: bytes) -> bytes:
    """The PNG with one byte of its compressed pixel data changed (a bit flip in transit)."""
    at = png.index(b"IDAT") + 4 + 6  # inside the chunk data, past the zlib header
    return png[:at] + bytes([png[at] ^ 0x10]) + png[at + 1:]


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def raw(client: FlaskClient, data: bytes, content_type: str = "image/png",
        query: str = "") -> Any:
    return client.post(f"/v1/jobs{query}", data=data,
                       headers={**AUTH, "Content-Type": content_type})


def expect_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]


@pytest.fixture(autouse=True)
def _nothing_enqueued_and_still_healthy(
    app: Flask, client: FlaskClient, redis_client: redis.Redis
) -> Any:
    """A refused upload leaves nothing that would run later: no message, and no `pending/`
    record in S3 (the reconciler would enqueue one); and the app still serves real traffic."""
    store = services_of(app).store
    pending_before = set(store.list_keys("pending/"))
    yield
    assert queued_job_ids(redis_client) == []
    assert set(store.list_keys("pending/")) == pending_before
    lookup = client.get("/v1/jobs/j_AAAAAAAAAAAAAAAAAAAAAA", headers=AUTH)  # Redis and S3
    assert lookup.status_code == 404 and lookup.json["error"]["code"] == "job_not_found"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_image"),
        (b"hello, I am text", 415, "not_an_image"),
        (image_bytes("PNG", (200, 200))[:-40], 400, "corrupt_image"),
        (altered_pixel_data(image_bytes("PNG", (200, 200))), 400, "corrupt_image"),
        (image_bytes("JPEG", (200, 200))[:400], 400, "corrupt_image"),
        (png_header_only(50_000, 50_000), 413, "too_many_pixels"),
        (png_header_only(8000, 6000), 413, "too_many_pixels"),
        (png_header_only(0, 10), 415, "not_an_image"),
        (image_bytes("GIF"), 415, "unsupported_image_type"),
        (image_bytes("WEBP"), 415, "unsupported_image_type"),
    ],
    ids=["empty", "text", "truncated-png", "altered-png", "truncated-jpeg", "bomb",
         "too-many-pixels", "zero-width", "gif", "webp"],
)
def test_bad_images_are_refused(
    client: FlaskClient, data: bytes, status: int, code: str
) -> None:
    expect_error(submit(client, data), status, code)
    expect_error(raw(client, data), status, code)


def test_empty_raw_body(client: FlaskClient) -> None:
    expect_error(raw(client, b""), 400, "empty_image")


def test_body_just_over_the_byte_limit_is_413(make_app) -> None:
    client = make_app(max_upload_bytes=2000).test_client()
    expect_error(raw(client, b"\0" * 2001), 413, "image_too_large")
    expect_error(raw(client, b"\0" * 2002), 413, "payload_too_large")  # refused unread
    part_too_big = image_bytes("BMP", (30, 30))  # ~2.8 kB
    assert len(part_too_big) > 2000
    expect_error(submit(client, part_too_big), 413, "image_too_large")
    # A multipart body past image + form overhead is refused before it is parsed.
    expect_error(submit(client, b"\0" * 70_000), 413, "payload_too_large")
    # At the limit, the size is fine (the bytes are then judged as an image).
    expect_error(raw(client, b"\0" * 2000), 415, "not_an_image")


def test_chunked_body_over_the_limit_is_cut_off(make_app) -> None:
    client = make_app(max_upload_bytes=2000).test_client()
    response = client.post(
        "/v1/jobs",
        input_stream=io.BytesIO(b"\0" * 10_000),
        headers={**AUTH, "Content-Type": "image/png", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] in ("payload_too_large", "image_too_large")


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    expect_error(raw(client, image_bytes(), "text/plain"), 415, "unsupported_media_type")
    expect_error(client.post("/v1/jobs", json={"image": "x"}, headers=AUTH),
                 415, "unsupported_media_type")


def test_multipart_without_an_image_part(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", data={"image": "just text"}, headers=AUTH,
                           content_type="multipart/form-data")
    expect_error(response, 400, "invalid_request")
    assert "image" in response.json["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({"pass_threshold": "0.7", "reject_threshold": "0.5"}, "invalid_thresholds", "pass"),
        ({"pass_threshold": "0.5", "reject_threshold": "0.5"}, "invalid_thresholds", "pass"),
        ({"pass_threshold": "0.9"}, "invalid_thresholds", "reject_threshold (0.65)"),
        ({"reject_threshold": "1.5"}, "invalid_request", "reject_threshold"),
        ({"pass_threshold": "-0.1"}, "invalid_request", "pass_threshold"),
        ({"pass_threshold": "nan"}, "invalid_request", "pass_threshold"),
        ({"pass_threshold": "abc"}, "invalid_request", "pass_threshold"),
        ({"metadata": "{not json"}, "invalid_request", "metadata"),
        ({"metadata": "[1, 2]"}, "invalid_request", "metadata"),
        ({"metadata": '{"a": NaN}'}, "invalid_request", "metadata"),
        ({"line": "../../etc"}, "invalid_request", "line"),
        ({"line": ""}, "invalid_request", "line"),
        ({"line": "x" * 65}, "invalid_request", "line"),
        ({"camera": "cam 1"}, "invalid_request", "camera"),
    ],
)
def test_bad_options_are_400_naming_the_field(
    client: FlaskClient, fields: dict[str, str], code: str, named: str
) -> None:
    response = submit(client, image_bytes(), **fields)
    expect_error(response, 400, code)
    assert named in response.json["error"]["message"]
    query = "?" + "&".join(f"{k}={v}" for k, v in fields.items())
    expect_error(raw(client, image_bytes(), query=query), 400, code)


@pytest.mark.parametrize(
    ("metadata", "limit"),
    [
        ('{"a": ' + "[" * 300 + "]" * 300 + "}", "the limit is 5"),  # 519 bytes, parses
        ('{"a": ' + "[" * 200 + "]" * 200 + "}", "the limit is 5"),
        ('{"a": ' + "[" * 1000 + "]" * 1000 + "}", "deeper than 5 levels"),  # RecursionError
        ('{"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}', "the limit is 5"),
        ("{" + ",".join(f'"k{i}": 1' for i in range(65)) + "}", "the limit is 64"),
        ('{"a": "' + "x" * 17000 + '"}', "16384"),
    ],
    ids=["depth-300", "depth-200", "depth-1000", "depth-6", "keys-65", "size-17k"],
)
def test_metadata_over_a_limit_is_400_naming_it_and_stores_nothing(
    client: FlaskClient, app: Flask, metadata: str, limit: str
) -> None:
    store = services_of(app).store
    before = set(store.list_keys("pending/")), set(store.list_keys("jobs/"))
    response = submit(client, image_bytes(), metadata=metadata)
    expect_error(response, 400, "invalid_request")
    assert "metadata" in response.json["error"]["message"]
    assert limit in response.json["error"]["message"]
    assert (set(store.list_keys("pending/")), set(store.list_keys("jobs/"))) == before


def test_bad_idempotency_key(client: FlaskClient) -> None:
    response = submit(client, image_bytes(), headers={"Idempotency-Key": "x" * 300})
    expect_error(response, 400, "invalid_idempotency_key")


@pytest.mark.parametrize("job_id", ["j_" + "A" * 22, "nope", "j_short", "j_.." + "a" * 20])
def test_unknown_or_malformed_job_id_is_404(client: FlaskClient, job_id: str) -> None:
    for suffix in ("", "/mask", "/overlay"):
        expect_error(client.get(f"/v1/jobs/{job_id}{suffix}", headers=AUTH),
                     404, "job_not_found")


def test_a_job_id_with_a_nul_is_refused_as_such(client: FlaskClient) -> None:
    for suffix in ("", "/mask", "/overlay"):  # no id holds one: 400 naming it, not a lookup
        expect_error(client.get(f"/v1/jobs/j_..%00{'a' * 18}{suffix}", headers=AUTH),
                     400, "invalid_request")


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    expect_error(client.get("/v2/nothing"), 404, "not_found")
    response = client.delete("/v1/jobs", headers=AUTH)
    expect_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
