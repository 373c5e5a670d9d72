"""Good-images-only deviation model (triton_models.goodonly) on tiny generated data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inspectq.tiling import tiles_along
from triton_models import byom, goodonly, mvtec
from triton_models.evaluate import TILE_STRIDE, service_input
from triton_models.export import export
from triton_models.metrics import auroc


def surfaces(count: int, seed: int) -> np.ndarray:
    """Streaky grey surfaces (uint8 N,3,256,256), streaks in a random direction each."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, 256, 256), np.uint8)
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(count):
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(3, 6)
        gray = rng.uniform(110, 160) + 15 * np.sin(phase) + rng.normal(0, 6, (256, 256))
        out[i] = gray.clip(0, 255).astype(np.uint8)
    return out


def with_spots(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright 24x24 spot on each image, and its mask."""
    rng = np.random.default_rng(seed)
    images, masks = images.copy(), np.zeros((len(images), 256, 256), bool)
    for i in range(len(images)):
        y, x = rng.integers(16, 216, size=2)
        images[i, :, y : y + 24, x : x + 24] = 235
        masks[i, y : y + 24, x : x + 24] = True
    return images, masks


def test_deviation_learns_good_surfaces_and_finds_spots(tmp_path: Path) -> None:
    model = goodonly.Deviation(seed=0)
    info = goodonly.fit(model, surfaces(24, 0), [image[None] for image in surfaces(12, 1)])
    low, high = info["calibration_good_max_distance_p50_p99"]  # type: ignore[misc]
    assert 0 < low <= high
    path = export(model, tmp_path / "model.pt")
    byom.smoke_test(path, len(goodonly.CLASSES))  # what `inspectq model install` checks
    good = surfaces(12, 2)
    bad, masks = with_spots(surfaces(12, 3), 4)
    held = mvtec.Dataset(np.concatenate([good, bad]), np.repeat([0, 1], 12),
                         np.concatenate([np.zeros_like(masks, np.uint8), masks.astype(np.uint8)]),
                         ["background", "spot"], [f"{i}.png" for i in range(24)])
    result = goodonly.evaluate(torch.jit.load(str(path)), held)
    spot = result["per_defect_class"]["spot"]  # type: ignore[index]
    assert spot["image_auroc"] > 0.95 and spot["pixel_auroc"] > 0.9
    # calibrated on good images: a typical good tile PASSes, a spotted one does not
    _, _, score, ood = torch.jit.load(str(path))(torch.from_numpy(np.concatenate([good, bad])))
    assert float(score[:12].median()) < 0.4 < float(score[12:].median())
    # a spot on a few cells leaves the surface in domain (the threshold is the largest of 12
    # calibration images', so about 1 in 13 good ones lands above it); foreign ones are not
    assert int((ood > 1.0).sum()) <= 2
    yy, xx = np.mgrid[0:256, 0:256]
    foreign = np.stack([(((yy // 8 + xx // 8) % 2) * 200 + 20),  # a checkerboard
                        np.random.default_rng(5).integers(0, 256, (256, 256)),  # white noise
                        128 + 100 * np.sin(np.hypot(yy - 128, xx - 128) / 2)])  # rings
    foreign = np.repeat(foreign.astype(np.uint8)[:, None], 3, 1)
    assert float(torch.jit.load(str(path))(torch.from_numpy(foreign))[3].min()) > 1.0


def test_large_images_are_fitted_and_scored_on_the_services_tiles(tmp_path: Path) -> None:
    """A 400 x 640 surface is cut into the service's native-scale tiles for the fit and the
    evaluation, and the heatmap stitched back finds a spot in either tile's half."""
    rng = np.random.default_rng(7)

    def wide(count: int) -> np.ndarray:
        out = np.empty((count, 3, 400, 640), np.uint8)
        for i in range(count):
            gray = rng.uniform(110, 160) + rng.normal(0, 6, (400, 640))
            out[i] = gray.clip(0, 255).astype(np.uint8)
        return out

    model = goodonly.Deviation(seed=0)
    tiles = [service_input(image).tiles for image in wide(10)]
    per_image = tiles_along(400, 256, TILE_STRIDE) * tiles_along(640, 256, TILE_STRIDE)
    assert per_image > 1 and all(t.shape == (per_image, 3, 256, 256) for t in tiles)
    info = goodonly.fit(model, np.concatenate(tiles[:6]), tiles[6:])
    assert info["tiles"] == 6 * per_image
    bad = wide(6)
    masks = np.zeros((6, 400, 640), np.uint8)
    for i, (y, x) in enumerate([(20, 20), (300, 600), (200, 320), (50, 500), (350, 30),
                                (180, 100)]):
        bad[i, :, y : y + 16, x : x + 16] = 240
        masks[i, y : y + 16, x : x + 16] = 1
    held = mvtec.Dataset(np.concatenate([wide(6), bad]), np.repeat([0, 1], 6),
                         np.concatenate([np.zeros_like(masks), masks]),
                         ["background", "spot"], [f"{i}.png" for i in range(12)])
    spot = goodonly.evaluate(model, held)["per_defect_class"]["spot"]  # type: ignore[index]
    assert spot["image_auroc"] == 1.0 and spot["pixel_auroc"] > 0.95


def test_pixel_auroc_matches_the_rank_statistic() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(4000) < 0.2
    prob = np.clip(rng.normal(0.4 + 0.2 * truth, 0.15), 0, 1)
    exact = auroc(prob, truth)
    assert abs(goodonly.pixel_auroc(prob, truth) - exact) < 2e-3
    assert abs(goodonly.pixel_auroc(1 - prob, truth) - (1 - exact)) < 2e-3
