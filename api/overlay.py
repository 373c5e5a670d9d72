"""The overlay a person looks at: the original image with each defect class tinted in its own
colour, every region boxed and labelled ``class score``, and the decision at a glance: a
border in the decision's colour (PASS green, REVIEW amber, REJECT red) and a label
``DECISION score`` in the top-left corner, followed by the frame's quality issues when it
has any. Lines and text grow with the image, so they stay readable on a 12 MP overlay viewed
whole.

It is a view of the job's durable record (the stored image, ``mask.png`` and the result), so
it is rendered here on its first request and then kept in S3 next to them
(``jobs/<id>/overlay.png``): workers spend nothing on pictures nobody opens, and every
later request is a plain read. The image is normalized as the workers normalize it (EXIF
orientation applied, 16-bit samples scaled by their real bit depth, alpha dropped, first
page of a TIFF), so mask pixels and boxes land where the model saw the defects.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont, ImageOps

from api.images import UNSIGNED_16_BIT_MODES
from inspectq.result import Decision, InspectionResult

#: RGB colours by class index (0 is background, never drawn); cycles for many classes.
_PALETTE = [
    (255, 64, 64),
    (255, 200, 0),
    (64, 160, 255),
    (200, 64, 255),
    (64, 255, 128),
    (255, 128, 192),
]
_TINT_OPACITY = 0.45
#: The decision's colour (border and label background) and its label's text colour.
_DECISION_STYLE = {
    Decision.PASS: ((0, 160, 60), (255, 255, 255)),
    Decision.REVIEW: ((255, 176, 0), (0, 0, 0)),
    Decision.REJECT: ((220, 30, 30), (255, 255, 255)),
}
#: Sizes as fractions of the image's shorter side, with a floor for small images: the
#: decision label's text is 4% of it, region labels 2.5%, the border 1%.
_DECISION_TEXT, _DECISION_TEXT_MIN_PX = 1 / 25, 12
_REGION_TEXT, _REGION_TEXT_MIN_PX = 1 / 40, 10
_BORDER, _BORDER_MIN_PX = 1 / 100, 2


def colour(class_index: int) -> tuple[int, int, int]:
    return _PALETTE[(class_index - 1) % len(_PALETTE)]


def _sample_bits(max_sample: int) -> int:
    """The rule of ``inspectq.imaging.sample_bits`` (that module needs OpenCV, the API does not):
    16-bit samples hold the smallest of 9..16 bits whose range holds their largest value."""
    return max(9, int(max_sample).bit_length())


def _upright_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, upright, the way ``inspectq.imaging.decode_image`` normalizes."""
    # Pillow has no 16-bit colour mode: it opens 16-bit RGB(A) PNGs and TIFFs as 8-bit from
    # each sample's high byte, and only the raw mode of the file's tiles (``RGB;16B``) tells.
    sixteen_bit_colour = any(";16" in str(tile.args) for tile in image.tile)
    image = ImageOps.exif_transpose(image)
    if image.mode in UNSIGNED_16_BIT_MODES:
        grey = image.convert("I")
        full = 2 ** _sample_bits(grey.getextrema()[1]) - 1
        return grey.point(lambda value: value * (255 / full) + 0.5).convert("L").convert("RGB")
    rgb = image.convert("RGB")
    if not sixteen_bit_colour:
        return rgb
    # Scale the high bytes by the bit depth their largest value implies (the same bit depth
    # as from the full samples). The low bytes are lost, so colour of fewer bits looks coarser
    # here than the model saw it: within 8 levels for 12-bit data, 32 for 10-bit.
    high = max(band_max for _, band_max in rgb.getextrema())
    full = 2 ** _sample_bits(high * 256 + 255) - 1
    lut = [min(255, int((value * 256 + 128) * 255 / full + 0.5)) for value in range(256)]
    return rgb.point(lut * 3)


def _tint(mask: Image.Image) -> Image.Image:
    """Each pixel in its class's colour (background black; it is never composited)."""
    bands = []
    for channel in range(3):
        lut = [0] + [colour(index)[channel] for index in range(1, 256)]
        bands.append(mask.point(lut))
    return Image.merge("RGB", bands)


def _scaled(short_side: int, fraction: float, minimum: int) -> int:
    return max(minimum, round(short_side * fraction))


def _upright(image_bytes: bytes) -> Image.Image:
    with Image.open(io.BytesIO(image_bytes)) as original:
        return _upright_rgb(original)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def render_image(image_bytes: bytes) -> bytes:
    """A job's stored image as the model saw it (upright 8-bit RGB, PNG): what browsers can
    show of any upload (a 16-bit TIFF, a sideways camera JPEG)."""
    return _png(_upright(image_bytes))


def render_overlay(image_bytes: bytes, mask_png: bytes, result: InspectionResult) -> bytes:
    """The overlay PNG of one job from its stored image, mask and result."""
    base = _upright(image_bytes)
    with Image.open(io.BytesIO(mask_png)) as stored_mask:
        mask = stored_mask.convert("L")
    if mask.size != base.size:
        mask = mask.resize(base.size, Image.Resampling.NEAREST)
    tinted = Image.blend(base, _tint(mask), _TINT_OPACITY)
    canvas = Image.composite(tinted, base, mask.point([0] + [255] * 255))
    draw = ImageDraw.Draw(canvas)
    short_side = min(base.size)
    _draw_regions(draw, result, short_side)
    _draw_decision(draw, result, canvas.size)
    return _png(canvas)


def _draw_regions(draw: ImageDraw.ImageDraw, result: InspectionResult, short_side: int) -> None:
    """Each region's box in its class's colour, labelled ``class score`` above it."""
    classes = result.model.classes
    thickness = max(1, short_side // 200)
    size = _scaled(short_side, _REGION_TEXT, _REGION_TEXT_MIN_PX)
    font = ImageFont.load_default(size=size)
    for defect in result.defects:
        name = defect.class_name
        index = classes.index(name) if name in classes else 1
        x0, y0, x1, y1 = defect.bbox
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour(index), width=thickness)
        label = f"{name} {defect.score:.2f}"
        text_height = draw.textbbox((0, 0), label, font=font)[3]
        y = max(0, y0 - thickness - text_height)  # just above the box, or at the top edge
        draw.text((x0, y), label, fill=colour(index), font=font,
                  stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))


def _draw_decision(
    draw: ImageDraw.ImageDraw, result: InspectionResult, size: tuple[int, int]
) -> None:
    """A border in the decision's colour and, top left, ``DECISION score (issues)``."""
    background, text_colour = _DECISION_STYLE[result.decision]
    width, height = size
    short_side = min(size)
    border = _scaled(short_side, _BORDER, _BORDER_MIN_PX)
    draw.rectangle((0, 0, width - 1, height - 1), outline=background, width=border)
    label = f"{result.decision.value} {result.score:.2f}"
    if result.quality.issues:
        issues = ", ".join(issue.value.replace("_", " ") for issue in result.quality.issues)
        label += f" ({issues})"
    font = ImageFont.load_default(size=_scaled(short_side, _DECISION_TEXT, _DECISION_TEXT_MIN_PX))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    pad = max(2, (bottom - top) // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=background)
    draw.text((pad - left, pad - top), label, fill=text_colour, font=font)
