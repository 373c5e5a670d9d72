"""Accept: decide whether uploaded bytes are an image inspectq will take.

Pillow does the decoding, for two reasons OpenCV cannot match: ``Image.open`` reads only the
header, so the pixel count of a decompression bomb is known (and refused) before a single
pixel is decoded; and ``verify()`` (plus, for formats other than PNG, a full ``load()``)
raises on truncated or corrupt data instead of returning a half-grey image. Workers decode
again with OpenCV; this is the gate only, and it refuses what they cannot decode: samples
other than 8 or 16-bit unsigned integers (float, signed or 32-bit TIFFs), which would
otherwise be accepted with 202 and then fail as ``undecodable_image``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from api.errors import ApiError

#: Pillow format name -> the content type the stored image gets (MPO is a camera JPEG).
ACCEPTED_FORMATS = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}

#: Pillow's modes for 16-bit unsigned grey samples; every other ``I`` mode (32-bit or signed
#: integers) and ``F`` (floating point) cannot be decoded by the workers.
UNSIGNED_16_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
#: TIFF tags: SampleFormat (1 unsigned integer, 2 signed, 3 floating point) and BitsPerSample.
_TIFF_SAMPLE_FORMAT, _TIFF_BITS_PER_SAMPLE = 339, 258


@dataclass(frozen=True)
class AcceptedImage:
    data: bytes
    content_type: str
    width: int
    height: int
    sha256: str


def validate_image(data: bytes, max_pixels: int) -> AcceptedImage:
    """Return the accepted image, or raise :class:`ApiError` naming what is wrong with it."""
    if not data:
        raise ApiError(400, "empty_image", "The image is empty (0 bytes).")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(max_pixels) from error
    except UnidentifiedImageError as error:
        raise ApiError(
            415,
            "not_an_image",
            "The body is not a decodable image: an unknown format, or a header that declares"
            " no pixels (zero width or height).",
        ) from error
    except Exception as error:
        # Pillow's format plugins raise many types (SyntaxError, struct.error, ValueError...)
        # on hostile headers; each of them means the same thing to the client.
        raise _corrupt() from error
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise ApiError(
                415,
                "unsupported_image_type",
                f"{image.format} images are not accepted; send JPEG, PNG, BMP or TIFF.",
            )
        pixel_type = _unsupported_pixel_type(image)
        if pixel_type is not None:
            raise ApiError(
                415,
                "unsupported_pixel_type",
                f"{pixel_type} cannot be inspected; send 8 or 16-bit unsigned integer samples"
                " (grey, RGB or RGBA).",
            )
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ApiError(400, "empty_image", f"The image has no pixels ({width}x{height}).")
        if width * height > max_pixels:
            raise _too_many_pixels(max_pixels, width, height)
        content_type = ACCEPTED_FORMATS[image.format]
        # verify() walks the file's structure: for PNG every chunk's CRC, the compressed
        # pixel data included, and the closing IEND, so a truncated or altered PNG fails
        # here. For the other formats it checks little, so they are also fully decoded
        # (JPEG/TIFF truncation); PNG is not, which saves ~1.3 ms of CPU per upload.
        try:
            image.verify()
        except Exception as error:
            raise _corrupt() from error
    if content_type != "image/png":
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as error:
            raise _corrupt() from error
    return AcceptedImage(
        data=data,
        content_type=content_type,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _unsupported_pixel_type(image: Image.Image) -> str | None:
    """What the workers could not decode about these samples, or None when they can.

    The mode says it for most files; a TIFF can also declare signed 8-bit samples, which
    Pillow opens as an ordinary ``L`` image, so its SampleFormat tag is read as well."""
    mode = image.mode
    if mode == "F":
        return "An image of floating-point samples (Pillow mode F)"
    if mode.startswith("I") and mode not in UNSIGNED_16_BIT_MODES:
        return f"An image of 32-bit or signed integer samples (Pillow mode {mode})"
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        sample_formats = _tiff_tag(image, _TIFF_SAMPLE_FORMAT, 1)
        if any(value != 1 for value in sample_formats):
            kind = "floating-point" if 3 in sample_formats else "signed integer"
            return (f"A TIFF of {kind} samples (SampleFormat {sample_formats[0]},"
                    f" Pillow mode {mode})")
        bits = max(_tiff_tag(image, _TIFF_BITS_PER_SAMPLE, 8))
        if bits > 16:
            return f"A TIFF of {bits}-bit samples (Pillow mode {mode})"
    return None


def _tiff_tag(image: TiffImagePlugin.TiffImageFile, tag: int, default: int) -> tuple[int, ...]:
    """A TIFF tag's numbers (one, or one per sample); ``default`` when the tag is absent."""
    value = image.tag_v2.get(tag, default)
    return tuple(int(v) for v in value) if isinstance(value, tuple) else (int(value),)


def _corrupt() -> ApiError:
    return ApiError(
        400, "corrupt_image", "The image is truncated or corrupt and cannot be decoded."
    )


def _too_many_pixels(
    max_pixels: int, width: int | None = None, height: int | None = None
) -> ApiError:
    size = f" ({width}x{height})" if width is not None else ""
    return ApiError(
        413,
        "too_many_pixels",
        f"The image declares more pixels{size} than the limit of {max_pixels}.",
    )
