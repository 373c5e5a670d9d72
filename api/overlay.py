"""The overlay a person looks at: the original image with each defect class tinted in its own
colour and every region boxed and labelled ``class score``.

It is a view of the job's durable record (the stored image, ``mask.png`` and the result), so
it is rendered here on its first request and then kept in S3 next to them
(``jobs/<id>/overlay.png``): workers spend nothing on pictures nobody opens, and every
later request is a plain read. The image is normalized as the workers normalize it (16-bit
samples scaled to 8 bit, alpha dropped, first page of a TIFF), so mask pixels and boxes land
where the model saw the defects.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

from inspectq.result import Region

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


def colour(class_index: int) -> tuple[int, int, int]:
    return _PALETTE[(class_index - 1) % len(_PALETTE)]


def _as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, the way ``workers.preprocess.decode_image`` normalizes."""
    if image.mode.startswith("I;16") or image.mode == "I":
        image = image.convert("I").point(lambda value: value * (1 / 257) + 0.5).convert("L")
    return image.convert("RGB")


def _tint(mask: Image.Image) -> Image.Image:
    """Each pixel in its class's colour (background black; it is never composited)."""
    bands = []
    for channel in range(3):
        lut = [0] + [colour(index)[channel] for index in range(1, 256)]
        bands.append(mask.point(lut))
    return Image.merge("RGB", bands)


def render_overlay(
    image_bytes: bytes, mask_png: bytes, defects: Sequence[Region], classes: Sequence[str]
) -> bytes:
    """The overlay PNG of one job. ``classes`` maps mask values to names (``classes[k]``)."""
    with Image.open(io.BytesIO(image_bytes)) as original:
        base = _as_rgb(original)
    with Image.open(io.BytesIO(mask_png)) as stored_mask:
        mask = stored_mask.convert("L")
    if mask.size != base.size:
        mask = mask.resize(base.size, Image.Resampling.NEAREST)
    tinted = Image.blend(base, _tint(mask), _TINT_OPACITY)
    canvas = Image.composite(tinted, base, mask.point([0] + [255] * 255))
    draw = ImageDraw.Draw(canvas)
    thickness = max(1, min(base.size) // 200)
    for defect in defects:
        name = defect.class_name
        index = classes.index(name) if name in classes else 1
        x0, y0, x1, y1 = defect.bbox
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour(index), width=thickness)
        draw.text((x0, max(0, y0 - 12)), f"{name} {defect.score:.2f}", fill=colour(index))
    out = io.BytesIO()
    canvas.save(out, "PNG", compress_level=1)
    return out.getvalue()
