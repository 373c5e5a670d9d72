"""Stage 5: turn the stitched mask into defect regions. Stitching the tiles' outputs back
together (``inspectq.imaging.stitch``) and the image score (the max over tiles,
``inspectq.imaging.image_score``) live in the core beside the tiling they invert, shared with
the trainer and ``inspectq model evaluate``.
"""

from __future__ import annotations

import cv2
import numpy as np

from inspectq.result import Region

#: Defect pixels this close belong to one region: thin cracks and scratches come out of the
#: model with small gaps, and one defect reported as a dozen fragments helps nobody.
MERGE_GAP_PX = 3


def find_regions(
    class_map: np.ndarray,
    defect_prob: np.ndarray,
    classes: tuple[str, ...],
    min_region_px: int,
) -> list[Region]:
    """Connected defects, most confident first.

    Defect pixels (``class_map > 0``) are grouped into 8-connected components after closing
    gaps of up to ``MERGE_GAP_PX``; a region's box, area and score count only its defect
    pixels. A region takes the class most of its pixels have: thin cracks otherwise break
    into a crack and several "scratch" fragments where the per-pixel class wavers. Regions
    smaller than ``min_region_px`` are noise and dropped. A region's score is the mean
    ``defect_prob`` over its pixels (rounded to 4 decimals, the area ratio to 6: what the
    result reports).
    """
    height, width = class_map.shape
    defect = (class_map > 0).astype(np.uint8)
    kernel = np.ones((2 * MERGE_GAP_PX + 1, 2 * MERGE_GAP_PX + 1), np.uint8)
    grouped = cv2.morphologyEx(defect, cv2.MORPH_CLOSE, kernel) | defect
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    regions: list[Region] = []
    for label in range(1, count):
        x, y, w, h, _ = (int(v) for v in stats[label])
        window = (slice(y, y + h), slice(x, x + w))
        inside = (labels[window] == label) & (defect[window] > 0)
        area = int(inside.sum())
        if area < min_region_px:
            continue
        ys, xs = np.nonzero(inside)
        votes = np.bincount(class_map[window][inside], minlength=len(classes))
        votes[0] = 0
        score = float(defect_prob[window][inside].mean())
        bbox = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
        regions.append(Region(
            class_name=classes[int(votes.argmax())], score=round(score, 4), bbox=bbox,
            area_px=area, area_ratio=round(area / (height * width), 6),
        ))
    regions.sort(key=lambda region: (-region.score, region.bbox))
    return regions

