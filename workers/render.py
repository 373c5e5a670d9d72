"""Stage 6: the mask PNG, the model's answer in pixels, stored beside the image.

``mask.png`` is a single-channel 8-bit PNG at the original size, each pixel the class index
of ``class_map`` (0 background, ``k`` = ``classes[k]``, the list in ``result.model.classes``).
It is machine-readable first; viewers show it nearly black, which is why the API draws an
overlay from it on request (``api.overlay``).
"""

from __future__ import annotations

import cv2
import numpy as np

from inspectq.storage import ObjectStore


def mask_png(class_map: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", class_map.astype(np.uint8))
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def write_mask(store: ObjectStore, key: str, mask: bytes) -> None:
    """Store a run's mask at ``key`` (``keyspace.keys_for(job).run_mask(run)``)."""
    store.put(key, mask, "image/png")
