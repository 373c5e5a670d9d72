"""The synthetic data generator, the MVTec-layout reader and the trainer, on tiny data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from triton_models import byom, card, mvtec, synth, train
from triton_models.verify import sha256_of


def test_render_is_seeded_and_reproducible() -> None:
    a_img, a_mask = synth.render(7, 3, "crack")
    b_img, b_mask = synth.render(7, 3, "crack")
    c_img, _ = synth.render(8, 3, "crack")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (256, 256, 3) and a_img.dtype == np.uint8
    assert set(np.unique(a_mask)) == {0, 255}


@pytest.mark.parametrize("defect", synth.DEFECT_CLASSES)
def test_every_defect_changes_the_pixels_it_masks(defect: str) -> None:
    image, mask = synth.render(3, 11, defect)
    _, clean_mask = synth.render(3, 11, None)
    assert not clean_mask.any()
    inside = mask > 0
    assert 3 <= inside.sum() < inside.size / 2
    # The same index without the defect draws a different surface, so compare contrast to
    # the image's own background instead: masked pixels must stand out.
    pixels = image.astype(float)
    diff = np.abs(pixels[inside].mean(0) - pixels[~inside].mean(0))
    assert diff.max() > 5


def test_generate_writes_the_mvtec_layout(tmp_path: Path) -> None:
    summary = synth.generate(tmp_path / "d", count=15, seed=1)
    root = tmp_path / "d"
    assert summary["good"] == 5
    goods = [*(root / "train" / "good").glob("*.png"), *(root / "test" / "good").glob("*.png")]
    assert len(goods) == 5
    for cls in synth.DEFECT_CLASSES:
        images = sorted((root / "test" / cls).glob("*.png"))
        masks = sorted((root / "ground_truth" / cls).glob("*_mask.png"))
        assert [m.name for m in masks] == [f"{i.stem}_mask.png" for i in images]
        assert images
    data = mvtec.load(root, list(synth.DEFECT_CLASSES))
    assert data.classes == ["background", *synth.DEFECT_CLASSES]
    assert data.masks is not None
    for label, mask in zip(data.labels, data.masks, strict=True):
        assert set(np.unique(mask)) <= {0, int(label)}
        assert (mask > 0).any() == (label > 0)
    assert json.loads((root / "dataset.json").read_text())["seed"] == 1


def test_trainer_with_masks_and_label_only(tmp_path: Path) -> None:
    data = tmp_path / "d"
    synth.generate(data, count=30, seed=2)
    out = tmp_path / "masks" / "1"
    train.main([str(data), "--out", str(out), "--steps", "3", "--batch", "4",
                "--classes", ",".join(synth.DEFECT_CLASSES), "--val-fraction", "0.3"])
    info = card.read(out)
    assert info["sha256"] == sha256_of(out / "model.pt")
    assert info["classes"] == ["background", *synth.DEFECT_CLASSES]
    assert set(info["metrics"]["per_class"]) == set(synth.DEFECT_CLASSES)
    assert 0 <= info["metrics"]["image_auroc"] <= 1
    assert byom.smoke_test(out / "model.pt", 5)["batch_consistency_max_abs_diff"] < 1e-3

    # Image labels only: the factory's folders sorted into good/defective, no ground_truth/.
    shutil.rmtree(data / "ground_truth")
    out = tmp_path / "labels" / "1"
    train.main([str(data), "--out", str(out), "--steps", "2", "--batch", "4",
                "--val-fraction", "0.3"])
    info = card.read(out)
    assert info["architecture"] == "cells-coarse"
    assert info["training"]["mode"] == "image labels only: multiple-instance cell classifier"
    assert info["classes"] == ["background", "crack", "pit", "scratch", "stain"]
    assert "per_class" not in info["metrics"] and "image_auroc" in info["metrics"]
    assert "image_auroc" in info["metrics"]["baseline_thumbnail_logreg"]
    # calibrated and with an out-of-domain score, as every model the trainer makes
    assert info["out_of_domain"]["features"] == 16 + 32 + 64 + 96 + 96  # CellNet's stages
    assert "method" in info["calibration"]
    assert info["service_path_metrics"]["at_default_thresholds"]["images"] > 0
    assert [o["name"] for o in info["outputs"]][-1] == "ood_score"
    smoke = byom.smoke_test(out / "model.pt", 5)
    assert smoke["batch_consistency_max_abs_diff"] < 1e-3

    # The cell network has no pixel output to learn masks with: a clear refusal.
    masked = tmp_path / "masked"
    synth.generate(masked, count=6, seed=3)
    with pytest.raises(SystemExit):
        train.main([str(masked), "--out", str(tmp_path / "x"), "--arch", "cells"])


def test_reader_names_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        mvtec.load(tmp_path)


def test_training_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    synth.generate(tmp_path / "d", count=12, seed=3)
    data = mvtec.load(tmp_path / "d", list(synth.DEFECT_CLASSES))
    first, _ = train.train(data, "unet-s2", steps=3, batch=4, crop=96, lr=1e-3, seed=5)
    second, _ = train.train(data, "unet-s2", steps=3, batch=4, crop=96, lr=1e-3, seed=5)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
