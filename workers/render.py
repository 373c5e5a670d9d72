"""Stage 6: the PNGs a person looks at.

* ``mask.png``: single-channel 8-bit PNG, original size, each pixel the class index of
  ``class_map`` (0 background, ``k`` = ``classes[k]``). Machine-readable first; viewers show
  it nearly black, which is why the overlay exists.
* ``overlay.png``: the original image with each defect class tinted in its own colour and
  every kept region boxed and labelled ``class score``.
"""

from __future__ import annotations

import cv2
import numpy as np

from workers.postprocess import Region

#: RGB colours by class index (background unused); cycles for models with many classes.
_PALETTE = [
    (0, 0, 0),
    (255, 64, 64),
    (255, 200, 0),
    (64, 160, 255),
    (200, 64, 255),
    (64, 255, 128),
    (255, 128, 192),
]


def _colour(index: int) -> tuple[int, int, int]:
    return _PALETTE[1 + (index - 1) % (len(_PALETTE) - 1)]


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def mask_png(class_map: np.ndarray) -> bytes:
    return _png(class_map.astype(np.uint8))


def overlay_png(
    image: np.ndarray, class_map: np.ndarray, regions: list[Region], classes: tuple[str, ...]
) -> bytes:
    """``image`` is RGB; the PNG is written in OpenCV's BGR order so it shows as RGB."""
    canvas = image.copy()
    tint = canvas.copy()
    for index in range(1, len(classes)):
        tint[class_map == index] = _colour(index)
    canvas = cv2.addWeighted(tint, 0.45, canvas, 0.55, 0)
    thickness = max(1, min(image.shape[:2]) // 200)
    for region in regions:
        colour = _colour(classes.index(region.class_name))
        x0, y0, x1, y1 = region.bbox
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
        label = f"{region.class_name} {region.score:.2f}"
        cv2.putText(canvas, label, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    colour, 1, cv2.LINE_AA)
    return _png(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
