"""Sample images with known defects, drawn by the same generator the model was trained on,
but from a seed the training set never used.

Each sample comes with its ground truth (the defect class and the box around the mask), so
the demo and the end-to-end tests can check what the stack answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from triton_models.synth import render

SAMPLE_SEED = 90210
STRIP_SIZE = (1600, 256)  # width, height: a steel-strip camera frame


@dataclass(frozen=True)
class Sample:
    name: str
    rgb: np.ndarray
    defect: str | None
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 of the defect mask, inclusive

    def png(self) -> bytes:
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(self.rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        return encoded.tobytes()


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _largest_render(defect: str, tries: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """The render with the largest defect area among the first ``tries`` indices."""
    best: tuple[np.ndarray, np.ndarray] | None = None
    for index in range(tries):
        rgb, mask = render(SAMPLE_SEED, index, defect)
        if best is None or np.count_nonzero(mask) > np.count_nonzero(best[1]):
            best = (rgb, mask)
    assert best is not None
    return best


def steel_strip(defect: str | None, x_offset: int = 1100) -> Sample:
    """A 1600x256 frame: a clean surface laid along the strip at its own scale (mirrored at
    every seam, so the texture runs on), with one defect pasted at ``x_offset`` (its pixels
    copied where its mask is set). Goes through the tiling path.

    Not stretched: a stretched surface is unlike anything a camera sees (or the model
    learned), and the model's out-of-domain score rightly sends it to REVIEW.
    """
    clean, _ = render(SAMPLE_SEED, 1, None)
    width, height = STRIP_SIZE
    copies = [clean if i % 2 == 0 else clean[:, ::-1] for i in range(-(-width // height))]
    strip = np.ascontiguousarray(np.concatenate(copies, axis=1)[:height, :width])
    if defect is None:
        return Sample("strip_1600x256_clean", strip, None, None)
    patch, mask = _largest_render(defect)
    region = strip[:, x_offset : x_offset + patch.shape[1]]
    region[mask > 0] = patch[mask > 0]
    full_mask = np.zeros(strip.shape[:2], np.uint8)
    full_mask[:, x_offset : x_offset + patch.shape[1]] = mask
    return Sample(f"strip_1600x256_{defect}", strip, defect, _box(full_mask))


def samples() -> list[Sample]:
    """The demo set: clean surfaces, one image per defect class, and two steel strips."""
    out = [Sample(f"clean_{i}", render(SAMPLE_SEED, i, None)[0], None, None) for i in (0, 1)]
    for defect in ("scratch", "pit", "crack", "stain"):
        rgb, mask = _largest_render(defect)
        out.append(Sample(defect, rgb, defect, _box(mask)))
    out.append(steel_strip(None))
    out.append(steel_strip("stain"))
    return out


def write(out_dir: Path, demo_set: list[Sample]) -> list[Path]:
    """Write ``demo_set`` as PNGs (for curl examples); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample in demo_set:
        path = out_dir / f"{sample.name}.png"
        path.write_bytes(sample.png())
        paths.append(path)
    return paths
