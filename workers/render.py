"""Stage 6: the mask PNG and the heatmap PNG, the model's answer in pixels, stored beside the
image.

``mask-<run>.png`` is a single-channel 8-bit PNG at the original size, each pixel the class
index of ``class_map`` (0 background, ``k`` = ``classes[k]``, the list in
``result.model.classes``). It is machine-readable first; viewers show it nearly black, which
is why the API draws an overlay from it on request (``api.overlay``).

``heatmap-<run>.png`` (``keyspace.heatmap_beside``) is the stitched defect probability, also
single-channel 8-bit: pixel value ``v`` is a probability of ``v / 255`` (white = surely a
defect). Images longer than ``HEATMAP_MAX_SIDE`` pixels get it scaled down (area average) to
that long side: it is a picture for people, and a 12 MP float map would cost more to encode
and store than the rest of the job. PNG at the fastest compression level. What it adds per
image, measured on the 2-core development machine: 1 to 3 ms of CPU at 256x256 (smooth to
noisy maps; 35 kB at worst), about 65 ms at 12 MP (mostly the scale-down; 250 kB), and one
more S3 put (a cache hit copies it: one more get and put).
"""

from __future__ import annotations

import cv2
import numpy as np

from inspectq.keyspace import heatmap_beside
from inspectq.storage import ObjectStore

#: The heatmap's longest side at most (pixels).
HEATMAP_MAX_SIDE = 1024


def _png(image: np.ndarray, *params: int) -> bytes:
    ok, encoded = cv2.imencode(".png", image, list(params))
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def mask_png(class_map: np.ndarray) -> bytes:
    return _png(class_map.astype(np.uint8))


def heatmap_png(defect_prob: np.ndarray) -> bytes:
    """The defect probability (``(height, width)``, 0..1) as an 8-bit grey PNG."""
    height, width = defect_prob.shape
    scale = HEATMAP_MAX_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        defect_prob = cv2.resize(defect_prob, size, interpolation=cv2.INTER_AREA)
    grey = np.rint(np.clip(defect_prob, 0.0, 1.0) * 255).astype(np.uint8)
    return _png(grey, cv2.IMWRITE_PNG_COMPRESSION, 1)


def write_run_images(store: ObjectStore, mask_key: str, mask: bytes, heatmap: bytes) -> None:
    """Store a run's mask at ``mask_key`` (``keyspace.keys_for(job).run_mask(run)``) and its
    heatmap beside it."""
    heatmap_key = heatmap_beside(mask_key)
    if heatmap_key is None:
        raise ValueError(f"{mask_key} is not a run's mask key")
    store.put(heatmap_key, heatmap, "image/png")
    store.put(mask_key, mask, "image/png")
