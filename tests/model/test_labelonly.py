"""Label-only training (triton_models.labelonly, `train --label-only`), its baseline and the
real-data fetcher, on tiny generated data: each test learns something or checks a layout it
could get wrong."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from triton_models import baseline, byom, labelonly, mvtec, net, realdata
from triton_models.export import export
from triton_models.metrics import auroc


def toy(count: int, seed: int) -> tuple[mvtec.Dataset, np.ndarray]:
    """Noisy grey tiles; every second one holds a dark 40x40 square at a random place.
    Returns the data set and each square's centre (y, x), -1 for good tiles."""
    rng = np.random.default_rng(seed)
    images = rng.normal(140, 12, (count, 1, 256, 256)).clip(0, 255).repeat(3, 1)
    labels = np.arange(count) % 2
    centres = np.full((count, 2), -1)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(20, 236 - 40, size=2)
        images[i, :, y : y + 40, x : x + 40] -= 60
        centres[i] = (y + 20, x + 20)
    return mvtec.Dataset(images.astype(np.uint8), labels, None, ["background", "defect"],
                         [f"{i}.png" for i in range(count)]), centres


@pytest.mark.parametrize("input_pool", [2, 4], ids=["cells", "cells-coarse"])
def test_cell_classifier_learns_labels_and_points_at_the_evidence(
        tmp_path: Path, input_pool: int) -> None:
    torch.manual_seed(0)
    train, _ = toy(48, 0)
    val, _ = toy(16, 1)
    held, centres = toy(32, 2)
    model, info = labelonly.fit(train, val, max_seconds=600, seed=0, batch=16, max_steps=40,
                                eval_every=20, input_pool=input_pool)
    assert info["steps"] == 40 and info["best_step"] in (20, 40)
    path = export(model, tmp_path / "model.pt")
    byom.smoke_test(path, 2)  # the contract, as `inspectq model install` checks it
    scripted = torch.jit.load(str(path))
    class_map, prob, score, _ = scripted(torch.from_numpy(held.images))
    assert auroc(score[:, 0].numpy(), held.labels > 0) > 0.9
    # The heatmap's hottest pixel lies on (or next to) the square that made the label.
    bad = np.flatnonzero(held.labels)
    peaks = [np.unravel_index(int(prob[i].float().argmax()), (256, 256)) for i in bad]
    near = [max(abs(py - centres[i][0]), abs(px - centres[i][1])) <= 40
            for i, (py, px) in zip(bad, peaks, strict=True)]
    assert np.mean(near) >= 0.8
    assert class_map.dtype == torch.uint8 and int(class_map.max()) <= 1
    # served as the average over the tile's 8 turns and mirrors: a turned part scores the same
    turned = np.ascontiguousarray(held.images.transpose(0, 1, 3, 2)[..., ::-1])
    _, turned_prob, turned_score, _ = scripted(torch.from_numpy(turned))
    assert torch.allclose(turned_score, score, atol=1e-4)
    back = turned_prob.float().flip(2).transpose(1, 2)
    assert float((back - prob.float()).abs().max()) < 1e-2  # fp16 heatmaps, bilinear edges


def test_the_eight_turns_and_mirrors_are_distinct_and_undone() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    seen = set()
    for turn in range(2):
        for mirror in range(4):
            y = net.dihedral(x, turn, mirror)
            seen.add(tuple(y.flatten().tolist()))
            assert torch.equal(net.undo_dihedral(y, turn, mirror), x)
    assert len(seen) == 8


def test_augmentation_trains_on_the_tiles_the_service_scores() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2, 3, 300, 400), dtype=np.uint8)
    assert labelonly.augment(big, rng).shape == (2, 3, 256, 256)  # one native-scale tile
    small = rng.integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    assert labelonly.augment(small, rng).shape == (2, 3, 256, 256)
    grey = np.repeat(rng.integers(0, 256, (1, 1, 256, 256), dtype=np.uint8), 3, 1)
    out = labelonly.augment(grey, rng).numpy()
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 1] == out[:, 2]).all()  # stays grey


def test_baseline_separates_what_a_thumbnail_shows() -> None:
    train, _ = toy(60, 3)
    held, _ = toy(30, 4)
    for data in (train, held):  # a whole-image shift: what a pixel model can see
        data.images[data.labels > 0] -= 20
    result = baseline.evaluate(train, held, size=16)
    assert result["image_auroc"] > 0.9
    assert set(result["inner_auroc_by_l2"]) == {str(v) for v in baseline.L2_GRID}
    shuffled = mvtec.Dataset(held.images, held.labels[::-1].copy(), None, held.classes,
                             held.files)
    assert baseline.evaluate(train, shuffled, size=16)["image_auroc"] < 0.8


def fake_wheel(path: Path) -> None:
    """An elpv_dataset wheel in miniature: 8 mono and 12 poly cells, a third defective."""
    rows = []
    with zipfile.ZipFile(path, "w") as wheel:
        for i in range(20):
            kind = "mono" if i < 8 else "poly"
            prob = [0.0, 1 / 3, 1.0][i % 3]
            name = f"images/cell{i:04d}.png"
            rows.append(f"{name}  {prob}  {kind}")
            ok, png = cv2.imencode(".png", np.full((30, 30), i * 10, np.uint8))
            assert ok
            wheel.writestr(f"elpv_dataset/data/{name}", io.BytesIO(png).getvalue())
        wheel.writestr("elpv_dataset/data/labels.csv", "\n".join(rows) + "\n")


def test_realdata_sorts_the_wheel_into_the_mvtec_layout(tmp_path: Path) -> None:
    wheel = tmp_path / "elpv_dataset-1.0.0.post1-py3-none-any.whl"
    fake_wheel(wheel)
    realdata.main(["fetch", str(tmp_path / "elpv"), "--wheel", str(wheel),
                   "--heldout-fraction", "0.25"])
    train = mvtec.load(tmp_path / "elpv" / "train", size=32)
    held = mvtec.load(tmp_path / "elpv" / "heldout", size=32)
    assert train.classes == held.classes == ["background", "defective"]
    assert len(train.labels) + len(held.labels) == 20
    assert not set(train.files) & set(held.files)
    # probability >= 0.5 is defective (only the 1.0 cells here); 1/3 counts as good
    names = {Path(f).name: int(k) for f, k in zip(train.files + held.files,
                                                  [*train.labels, *held.labels], strict=True)}
    assert names["mono_cell0002.png"] == 1 and names["mono_cell0001.png"] == 0
    info = json.loads((tmp_path / "elpv" / "heldout" / "dataset.json").read_text())
    assert info["package"] == realdata.PACKAGE
    assert sum(info["counts"].values()) == len(held.labels) == 5
    assert set(held.labels) == {0, 1}
