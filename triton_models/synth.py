"""Seeded synthetic surface-defect data written in the MVTec AD directory layout.

Surfaces: brushed steel, cast metal and coated (painted) panels, under a lighting gradient,
sensor noise and a slight blur. Defects: scratch (thin, long), pit (dent), crack (branching)
and stain, each with a pixel-accurate mask. About a third of the images are defect-free.

Layout written (the same one the trainer reads for real data)::

    OUT/train/good/000.png
    OUT/test/good/000.png
    OUT/test/<class>/000.png
    OUT/ground_truth/<class>/000_mask.png      (0 or 255)
    OUT/dataset.json                           (generator settings, for the model card)

Every image is drawn from its own ``numpy`` generator seeded by (seed, index), so the data
set is identical across runs and machines, whatever the count.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

DEFECT_CLASSES = ("scratch", "pit", "crack", "stain")
SURFACES = ("brushed_steel", "cast_metal", "coated")
SIZE = 256

Rng = np.random.Generator


def _noise(rng: Rng, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field / (field.std() + 1e-6)


def _brushed_steel(rng: Rng) -> np.ndarray:
    big = int(SIZE * 1.5)
    streaks = rng.standard_normal((big, big)).astype(np.float32)
    streaks = cv2.blur(streaks, (int(rng.integers(25, 70)), 1))
    streaks /= streaks.std() + 1e-6
    angle = float(rng.uniform(0, 180))
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    streaks = cv2.warpAffine(streaks, rot, (big, big), borderMode=cv2.BORDER_REFLECT)
    off = (big - SIZE) // 2
    streaks = streaks[off : off + SIZE, off : off + SIZE]
    base = rng.uniform(0.45, 0.7)
    gray = base + rng.uniform(0.02, 0.06) * streaks + 0.01 * _noise(rng, (SIZE, SIZE), 0.7)
    tint = np.array([1.0, 1.0, rng.uniform(1.0, 1.06)], np.float32)
    return gray[..., None] * tint


def _cast_metal(rng: Rng) -> np.ndarray:
    field = sum(w * _noise(rng, (SIZE, SIZE), s) for w, s in ((0.5, 16), (0.3, 5), (0.2, 1.2)))
    grain = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    base = rng.uniform(0.3, 0.55)
    gray = base + rng.uniform(0.03, 0.07) * field + rng.uniform(0.01, 0.03) * grain
    tint = np.array([1.0, rng.uniform(0.97, 1.02), rng.uniform(0.93, 1.0)], np.float32)
    return gray[..., None] * tint


def _coated(rng: Rng) -> np.ndarray:
    palette = np.array(
        [[0.2, 0.45, 0.25], [0.2, 0.3, 0.6], [0.55, 0.55, 0.52], [0.75, 0.7, 0.55],
         [0.7, 0.2, 0.15]],
        np.float32,
    )
    color = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.15)
    peel = _noise(rng, (SIZE, SIZE), rng.uniform(2.0, 4.0))
    return color[None, None, :] * (1.0 + rng.uniform(0.02, 0.05) * peel[..., None])


SURFACE_MAKERS: dict[str, Callable[[Rng], np.ndarray]] = {
    "brushed_steel": _brushed_steel,
    "cast_metal": _cast_metal,
    "coated": _coated,
}


def _path(rng: Rng, length: float, bend: float, jag: float = 0.0) -> np.ndarray:
    """A polyline of about `length` pixels in 4 px steps starting somewhere in the image.

    `bend` is a constant curvature (scratches arc gently); `jag` is a zig-zag whose heading
    is pulled back towards the start heading (cracks wander but do not curl into loops).
    """
    steps = max(int(length / 4), 2)
    start_heading = heading = rng.uniform(0, 2 * np.pi)
    turn = rng.normal(0, bend)
    point = rng.uniform(20, SIZE - 20, size=2)
    points = [point.copy()]
    for _ in range(steps):
        heading = start_heading + 0.6 * (heading - start_heading) + turn + rng.normal(0, jag)
        start_heading += turn
        point = point + 4 * np.array([np.cos(heading), np.sin(heading)])
        points.append(point.copy())
    return np.array(points)


def _stroke_alpha(paths: list[np.ndarray], width: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of polylines drawn `width` pixels wide."""
    canvas = np.zeros((SIZE * 4, SIZE * 4), np.uint8)
    for path in paths:
        pts = np.round(path * 4).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], False, 255, thickness=width * 4, lineType=cv2.LINE_AA)
    return cv2.resize(canvas, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _scratch(rng: Rng, image: np.ndarray) -> np.ndarray:
    alpha = _stroke_alpha([_path(rng, rng.uniform(50, 230), 0.015)], int(rng.integers(1, 5)))
    sign = rng.choice([-1.0, 1.0])
    image += sign * rng.uniform(0.12, 0.3) * alpha[..., None]
    return alpha


def _pit(rng: Rng, image: np.ndarray) -> np.ndarray:
    radius = rng.uniform(2.5, 20) if rng.random() < 0.7 else rng.uniform(2.5, 6)
    centre = rng.uniform(radius + 4, SIZE - radius - 4, size=2)
    aspect = rng.uniform(0.6, 1.0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dx, dy = (xx - centre[0]) / radius, (yy - centre[1]) / (radius * aspect)
    dist = np.sqrt(dx**2 + dy**2)
    alpha = np.clip((1.0 - dist) * radius, 0, 1)
    # A dent is darker on the side facing away from the light and has a bright rim.
    light = rng.uniform(0, 2 * np.pi)
    shade = 0.6 + 0.4 * (dx * np.cos(light) + dy * np.sin(light))
    depth = rng.uniform(0.18, 0.4)
    rim = np.exp(-((dist - 1.1) ** 2) / 0.02) * rng.uniform(0.03, 0.1)
    image -= (depth * shade * alpha)[..., None]
    image += rim[..., None]
    return alpha


def _crack(rng: Rng, image: np.ndarray) -> np.ndarray:
    trunk = _path(rng, rng.uniform(60, 200), 0.0, jag=0.5)
    paths = [trunk]
    for _ in range(int(rng.integers(1, 4))):
        start = trunk[int(rng.integers(1, len(trunk)))]
        branch = _path(rng, rng.uniform(20, 80), 0.0, jag=0.5)
        paths.append(branch - branch[0] + start)
    alpha = _stroke_alpha(paths, int(rng.integers(1, 4)))
    image *= 1.0 - rng.uniform(0.45, 0.75) * alpha[..., None]
    return alpha


def _stain(rng: Rng, image: np.ndarray) -> np.ndarray:
    radius = rng.uniform(12, 60)
    centre = rng.uniform(radius * 0.6, SIZE - radius * 0.6, size=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dist = np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / radius
    blob = (1.0 - dist) + 0.35 * _noise(rng, (SIZE, SIZE), radius / 4)
    region = (blob > 0.3).astype(np.float32)
    alpha = cv2.GaussianBlur(region, (0, 0), 1.2)
    colors = np.array([[0.35, 0.22, 0.1], [0.1, 0.1, 0.1], [0.55, 0.45, 0.2], [0.3, 0.3, 0.45]])
    color = colors[rng.integers(len(colors))].astype(np.float32)
    strength = rng.uniform(0.45, 0.75)
    image[:] = image * (1 - strength * alpha[..., None]) + color * strength * alpha[..., None]
    return region


DEFECT_MAKERS: dict[str, Callable[[Rng, np.ndarray], np.ndarray]] = {
    "scratch": _scratch,
    "pit": _pit,
    "crack": _crack,
    "stain": _stain,
}


def render(seed: int, index: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image (SIZE, SIZE, 3) and its binary uint8 mask (0 or 255)."""
    rng = np.random.default_rng([seed, index])
    image = SURFACE_MAKERS[SURFACES[int(rng.integers(len(SURFACES)))]](rng).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), bool)
    if defect is not None:
        count = int(rng.integers(1, 3 if defect == "stain" else 4))
        for _ in range(count):
            mask |= DEFECT_MAKERS[defect](rng, image) >= 0.5
    # Lighting: a linear gradient times a soft vignette, then blur and sensor noise.
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.05, 0.3) * (xx * np.cos(theta) + yy * np.sin(theta)) * 2
    light *= 1.0 - rng.uniform(0.0, 0.35) * (xx**2 + yy**2)
    image *= light[..., None]
    blur = rng.uniform(0.0, 1.0)
    if blur > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    image += rng.normal(0, rng.uniform(0.004, 0.025), image.shape).astype(np.float32)
    rgb = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return rgb, mask.astype(np.uint8) * 255


def plan(count: int, good_fraction: float) -> list[str | None]:
    """Class of each image index (None = defect-free), classes in a fixed round-robin."""
    n_good = round(count * good_fraction)
    kinds: list[str | None] = [None] * n_good
    kinds += [DEFECT_CLASSES[i % len(DEFECT_CLASSES)] for i in range(count - n_good)]
    return kinds


def generate(out: Path, count: int, seed: int, good_fraction: float = 1 / 3,
             train_good_fraction: float = 0.8) -> dict[str, object]:
    """Write `count` images in the MVTec AD layout under `out`; returns the summary it saves."""
    kinds = plan(count, good_fraction)
    n_good = kinds.count(None)
    n_train_good = round(n_good * train_good_fraction)
    counters: dict[str, int] = {}
    for index, defect in enumerate(tqdm(kinds, desc=f"synth {out.name}", unit="img")):
        if defect is None:
            folder = out / ("train" if index < n_train_good else "test") / "good"
        else:
            folder = out / "test" / defect
        key = str(folder)
        number = counters.get(key, 0)
        counters[key] = number + 1
        folder.mkdir(parents=True, exist_ok=True)
        rgb, mask = render(seed, index, defect)
        cv2.imwrite(str(folder / f"{number:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if defect is not None:
            gt = out / "ground_truth" / defect
            gt.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(gt / f"{number:03d}_mask.png"), mask)
    summary: dict[str, object] = {
        "generator": "triton_models.synth",
        "seed": seed,
        "images": count,
        "good": n_good,
        "per_class": {c: kinds.count(c) for c in DEFECT_CLASSES},
        "surfaces": list(SURFACES),
        "size": SIZE,
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (MVTec AD layout)")
    parser.add_argument("--count", type=int, default=2400, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--good-fraction", type=float, default=1 / 3)
    args = parser.parse_args(argv)
    summary = generate(args.out, args.count, args.seed, args.good_fraction)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
