"""The overlay drawn by the API from a job's stored image, mask and result."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from api.overlay import colour, render_overlay
from inspectq.result import Region

CLASSES = ["background", "scratch", "pit"]
DEFECTS = [Region(class_name="pit", score=0.9, bbox=(5, 10, 25, 20), area_px=200,
                  area_ratio=0.1)]


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _mask(size: tuple[int, int] = (64, 48)) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(2, (5, 10, 25, 20))  # class 2, "pit", under the region's box
    return _png(mask)


def _overlay(image: bytes, mask: bytes | None = None) -> Image.Image:
    drawn = Image.open(io.BytesIO(render_overlay(image, mask or _mask(), DEFECTS, CLASSES)))
    assert drawn.format == "PNG" and drawn.mode == "RGB"
    return drawn


def test_defect_pixels_are_tinted_boxed_and_the_rest_untouched() -> None:
    drawn = _overlay(_png(Image.new("RGB", (64, 48), (128, 128, 128))))
    assert drawn.size == (64, 48)
    assert drawn.getpixel((50, 40)) == (128, 128, 128)  # background as it was
    tinted = drawn.getpixel((15, 15))
    expected = tuple(round(0.55 * 128 + 0.45 * c) for c in colour(2))
    assert all(abs(a - b) <= 1 for a, b in zip(tinted, expected, strict=True)), tinted
    assert drawn.getpixel((5, 10)) == colour(2)  # the box, in the class's colour
    assert drawn.getpixel((24, 19)) == colour(2)  # bbox ends are exclusive


@pytest.mark.parametrize(
    ("image", "grey"),
    [
        pytest.param(Image.new("I;16", (64, 48), 25700), 100, id="16-bit-grey"),
        pytest.param(Image.new("L", (64, 48), 77), 77, id="8-bit-grey"),
        pytest.param(Image.new("RGBA", (64, 48), (90, 90, 90, 0)), 90, id="rgba-alpha-dropped"),
    ],
)
def test_images_are_normalized_as_the_workers_do(image: Image.Image, grey: int) -> None:
    assert _overlay(_png(image)).getpixel((50, 40)) == (grey, grey, grey)


def test_a_jpeg_original_and_a_mask_of_another_size() -> None:
    jpeg = _png(Image.new("RGB", (128, 96), (200, 200, 200)), "JPEG")
    drawn = _overlay(jpeg, _mask((64, 48)))  # scaled to the image, nearest neighbour
    assert drawn.size == (128, 96)
    assert drawn.getpixel((30, 30)) != drawn.getpixel((100, 80))
