"""The overlay drawn by the API from a job's stored image, mask and result."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import pytest
from PIL import Image

from api.overlay import colour, render_overlay
from inspectq.imaging import decode_image
from inspectq.result import (
    Decision,
    ImageQuality,
    InspectionResult,
    ModelInfo,
    QualityIssue,
    Region,
    Thresholds,
    Timings,
)

CLASSES = ("background", "scratch", "pit")
SIZE = (128, 96)
BOX = (60, 50, 90, 70)  # clear of the decision label in the top-left corner
DEFECTS = [Region(class_name="pit", score=0.9, bbox=BOX, area_px=600, area_ratio=0.05)]
GREY = (128, 128, 128)


def _result(decision: Decision = Decision.REJECT, score: float = 0.9,
            defects: Sequence[Region] = DEFECTS,
            issues: Sequence[QualityIssue] = ()) -> InspectionResult:
    return InspectionResult(
        decision=decision, score=score, defects=list(defects), width=SIZE[0], height=SIZE[1],
        model=ModelInfo(name="inspectq_seg", version="1", sha256="", classes=CLASSES),
        thresholds=Thresholds(pass_threshold=0.4, reject_threshold=0.65),
        quality=ImageQuality(issues=list(issues)), timings=Timings(), cache_hit=False,
    )


def _png(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _mask(size: tuple[int, int] = SIZE, box: tuple[int, int, int, int] | None = BOX) -> bytes:
    mask = Image.new("L", size, 0)
    if box is not None:
        mask.paste(2, box)  # class 2, "pit", under the region's box
    return _png(mask)


def _overlay(image: bytes, mask: bytes | None = None,
             result: InspectionResult | None = None) -> Image.Image:
    drawn = Image.open(io.BytesIO(render_overlay(image, mask or _mask(), result or _result())))
    assert drawn.format == "PNG" and drawn.mode == "RGB"
    return drawn


def test_defect_pixels_are_tinted_boxed_and_the_rest_untouched() -> None:
    drawn = _overlay(_png(Image.new("RGB", SIZE, GREY)))
    assert drawn.size == SIZE
    assert drawn.getpixel((110, 85)) == GREY  # background as it was
    tinted = drawn.getpixel((75, 60))
    expected = tuple(round(0.55 * 128 + 0.45 * c) for c in colour(2))
    assert all(abs(a - b) <= 1 for a, b in zip(tinted, expected, strict=True)), tinted
    assert drawn.getpixel((60, 50)) == colour(2)  # the box, in the class's colour
    assert drawn.getpixel((89, 69)) == colour(2)  # bbox ends are exclusive


def _grey_16(value: int, peak: int) -> Image.Image:
    """16-bit grey of ``value`` with one pixel at ``peak`` (the largest sample)."""
    image = Image.new("I;16", SIZE, value)
    image.putpixel((0, 0), peak)
    return image


@pytest.mark.parametrize(
    ("image", "grey"),
    [
        pytest.param(_grey_16(25700, 65535), 100, id="16-bit-grey"),
        pytest.param(_grey_16(1000, 4095), 62, id="12-bit-grey-in-16"),  # 1000 * 255 / 4095
        pytest.param(Image.new("L", SIZE, 77), 77, id="8-bit-grey"),
        pytest.param(Image.new("RGBA", SIZE, (90, 90, 90, 0)), 90, id="rgba-alpha-dropped"),
    ],
)
def test_images_are_normalized_as_the_workers_do(image: Image.Image, grey: int) -> None:
    assert _overlay(_png(image)).getpixel((110, 85)) == (grey, grey, grey)


def test_a_jpeg_original_and_a_mask_of_another_size() -> None:
    jpeg = _png(Image.new("RGB", (256, 192), (200, 200, 200)), "JPEG")
    drawn = _overlay(jpeg, _mask())  # scaled to the image, nearest neighbour
    assert drawn.size == (256, 192)
    assert drawn.getpixel((150, 120)) != drawn.getpixel((230, 170))


def _bgr_16(bits: int) -> np.ndarray:
    """A 16-bit colour gradient holding ``bits``-bit data (largest sample 2**bits - 1)."""
    full = 2 ** bits - 1
    ramp = np.linspace(0, full, SIZE[0], dtype=np.float64)
    bgr = np.stack([np.tile(ramp, (SIZE[1], 1)), np.full(SIZE[::-1], full / 3),
                    np.tile(ramp[::-1], (SIZE[1], 1))], axis=-1)
    return bgr.round().astype(np.uint16)


def _encoded(ext: str, array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, array)
    assert ok
    return data.tobytes()


def _sideways(fmt: str, orientation: int) -> bytes:
    """A landscape raster with a bright block and an EXIF orientation."""
    stored = np.full((SIZE[1], SIZE[0], 3), 60, np.uint8)
    stored[30:50, 40:90] = (230, 230, 230)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _png(Image.fromarray(stored), fmt, exif=exif)


@pytest.mark.parametrize(
    ("make", "tolerance"),
    [
        pytest.param(lambda: _encoded(".png", _bgr_16(12)[..., 0]), 0, id="12-bit-grey-png"),
        pytest.param(lambda: _encoded(".tiff", _bgr_16(10)[..., 0]), 0, id="10-bit-grey-tiff"),
        # Pillow gives 16-bit colour as its high bytes only: coarser, at the same brightness.
        pytest.param(lambda: _encoded(".png", _bgr_16(12)), 8, id="12-bit-colour-png"),
        pytest.param(lambda: _sideways("JPEG", 6), 3, id="exif-6-jpeg"),
        pytest.param(lambda: _sideways("PNG", 8), 0, id="exif-8-png"),
        # libtiff turns a TIFF on load already: the overlay must not turn it twice.
        pytest.param(lambda: _sideways("TIFF", 6), 0, id="exif-6-tiff"),
    ],
)
def test_the_overlay_shows_what_the_model_saw(make: Callable[[], bytes], tolerance: int) -> None:
    """Upright and scaled by the samples' real bit depth, exactly as the worker decodes."""
    data = make()
    seen = decode_image(data)
    height, width = seen.shape[:2]
    drawn = np.asarray(_overlay(data, _mask((width, height), None), _result(defects=[])))
    assert drawn.shape == seen.shape
    inside = (slice(40, height - 8), slice(8, width - 8))  # clear of the border and label
    assert np.abs(drawn[inside].astype(int) - seen[inside]).max() <= tolerance


def test_mask_and_boxes_land_on_the_upright_image() -> None:
    """Orientation 6: the stored 128x96 raster is shown as 96x128; the worker's mask and box
    (upright pixels) cover the block where it appears upright."""
    data = _sideways("JPEG", 6)
    box = (46, 40, 66, 90)  # the stored block (rows 30:50, columns 40:90) turned clockwise
    region = Region(class_name="pit", score=0.9, bbox=box, area_px=1000, area_ratio=0.08)
    drawn = _overlay(data, _mask((96, 128), box), _result(defects=[region]))
    assert drawn.size == (96, 128)
    assert drawn.getpixel((46, 40)) == colour(2)
    tinted = drawn.getpixel((56, 65))  # inside: the bright block, tinted
    assert all(abs(a - round(0.55 * 230 + 0.45 * c)) <= 3
               for a, c in zip(tinted, colour(2), strict=True)), tinted


def _is(decision: Decision, pixel: tuple[int, int, int]) -> bool:
    """PASS green, REVIEW amber, REJECT red."""
    red, green, blue = pixel
    return {
        Decision.PASS: green > 120 and red < 80 and blue < 120,
        Decision.REVIEW: red > 200 and 120 < green < 220 and blue < 60,
        Decision.REJECT: red > 180 and green < 80 and blue < 80,
    }[decision]


@pytest.mark.parametrize("decision", list(Decision))
def test_a_border_and_a_label_in_the_decision_colour(decision: Decision) -> None:
    drawn = _overlay(_png(Image.new("RGB", SIZE, GREY)),
                     result=_result(decision=decision, score=0.5))
    width, height = SIZE
    for corner in ((width - 1, height - 1), (width // 2, height - 1), (width - 1, height // 2),
                   (1, 1)):  # the border all round, the label's background top left
        assert _is(decision, drawn.getpixel(corner)), (corner, drawn.getpixel(corner))
    label = np.asarray(drawn)[2:14, 2:60]  # the text: another colour on that background
    assert len({tuple(pixel) for pixel in label.reshape(-1, 3)}) > 2


def _label_box(drawn: Image.Image) -> tuple[int, int]:
    """Width and height of the decision label on a uniform grey image: the extent of what is
    drawn in its top-left quarter inside the border."""
    pixels = np.asarray(drawn)
    height, width = pixels.shape[:2]
    border = next(i for i in range(height) if tuple(pixels[height - 1 - i, width // 2]) == GREY)
    quarter = pixels[border:height // 2, border:width // 2]
    ys, xs = np.nonzero((quarter != GREY).any(axis=-1))
    return int(xs.max()) + border + 1, int(ys.max()) + border + 1


def test_labels_grow_with_the_image() -> None:
    """A 12 MP overlay is looked at whole, shrunk to a screen: its labels must be large."""
    big_size = (4000, 3000)
    box = (2000, 1500, 2600, 1900)
    region = Region(class_name="pit", score=0.9, bbox=box, area_px=240000, area_ratio=0.02)
    result = _result(decision=Decision.PASS, score=0.1, defects=[region])
    big = _overlay(_png(Image.new("RGB", big_size, GREY)), _mask(big_size, box), result)
    small = _overlay(_png(Image.new("RGB", SIZE, GREY)), _mask(), result)
    big_width, big_height = _label_box(big)
    small_width, small_height = _label_box(small)
    assert big_height >= 0.04 * 3000 and small_height <= 30
    assert big_width >= 10 * small_width / 2
    # The region's label sits above its box, in the class's colour, tens of pixels tall.
    above = np.asarray(big)[box[1] - 200:box[1], box[0]:box[0] + 600]
    rows = np.flatnonzero((above == colour(2)).all(axis=-1).any(axis=1))
    assert rows.size and rows.max() - rows.min() >= 0.015 * 3000


def test_quality_issues_are_named_on_the_label() -> None:
    image = _png(Image.new("RGB", (512, 384), GREY))
    mask = _mask((512, 384))
    plain = _overlay(image, mask, _result(Decision.REVIEW, 0.1))
    flagged = _overlay(image, mask, _result(Decision.REVIEW, 0.1,
                                            issues=[QualityIssue.BLANK, QualityIssue.SATURATED]))
    assert _label_box(flagged)[0] > 2 * _label_box(plain)[0]
