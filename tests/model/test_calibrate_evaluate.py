"""Train/serve parity (`inspectq model evaluate` scores as the service does), the calibration,
the out-of-domain score, the recommended thresholds and the trainer's time-keyed schedule."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

from inspectq_cli.main import cli
from triton_models import byom, calibrate, card, evaluate, mvtec, synth, train
from triton_models.net import OodScore
from triton_models.repository import Repositories

SHIPPED_V1 = Repositories().model_file(1)


class BrightestPixel(torch.nn.Module):
    """A contract model whose tile score is the tile's brightest pixel / 255."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = images.shape[0]
        score = images.float().amax((1, 2, 3)).unsqueeze(1) / 255
        return (torch.zeros(n, 256, 256, dtype=torch.uint8),
                torch.zeros(n, 256, 256, dtype=torch.float16), score)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _surface(height: int, width: int, level: int = 100) -> np.ndarray:
    noise = np.random.default_rng(0).integers(-20, 21, (height, width, 3))
    return np.clip(level + noise, 0, 255).astype(np.uint8)


def test_large_images_are_scored_on_native_scale_tiles_as_the_service_does(
        tmp_path: Path) -> None:
    # A 2x2 px bright dot in a 1024 px image: resized to 256 it would fade to a quarter of its
    # brightness; cut into native-scale tiles as the workers do, one tile sees it whole.
    dotted = _surface(1024, 1024)
    dotted[700:702, 900:902] = 255
    _write(tmp_path / "set" / "defective" / "dot.png", dotted)
    _write(tmp_path / "set" / "good" / "plain.png", _surface(300, 200))
    model = torch.jit.script(BrightestPixel())
    results = evaluate.score_images(model, evaluate.samples(tmp_path / "set"))
    by_name = {r.sample.path.name: r for r in results}
    assert by_name["dot.png"].score == 1.0 and by_name["dot.png"].sample.defective
    assert by_name["plain.png"].score == pytest.approx(120 / 255)
    resized = cv2.resize(dotted, (256, 256), interpolation=cv2.INTER_AREA)
    assert resized.max() < 200  # what the trainer's old resize-everything path would see


def test_the_trainer_loads_images_at_the_scale_the_service_tiles_them(tmp_path: Path) -> None:
    for name, side in (("a", 300), ("b", 300)):
        _write(tmp_path / "big" / "train" / "good" / f"{name}.png", _surface(side, side))
    _write(tmp_path / "big" / "test" / "dent" / "c.png", _surface(300, 300))
    data = mvtec.load(tmp_path / "big", size=None)
    assert data.images.shape == (3, 3, 300, 300)  # native: the service tiles, not resizes
    _write(tmp_path / "small" / "train" / "good" / "a.png", _surface(100, 120))
    _write(tmp_path / "small" / "test" / "dent" / "b.png", _surface(100, 120))
    assert mvtec.load(tmp_path / "small", size=None).images.shape == (2, 3, 256, 256)
    _write(tmp_path / "big" / "test" / "dent" / "d.png", _surface(300, 400))
    with pytest.raises(ValueError, match="pass a --size"):
        mvtec.load(tmp_path / "big", size=None)
    for name in ("a", "b", "c"):  # all 300 x 400: native, not square; label-only batches
        _write(tmp_path / "wide" / "test" / "dent" / f"{name}.png", _surface(300, 400))
    wide = mvtec.load(tmp_path / "wide", size=None, use_masks=False)
    batch, _, _ = train.make_batch(wide, np.arange(3).repeat(4), 400,
                                   np.random.default_rng(0))
    assert batch.shape == (12, 3, 300, 400)  # whole images, only half turns


def test_evaluate_reads_a_file_list_and_counts_decisions_with_the_quality_rule(
        tmp_path: Path) -> None:
    _write(tmp_path / "a.png", _surface(256, 256, 30))     # dim good: PASS
    _write(tmp_path / "b.png", _surface(256, 256, 200))    # bright good: REJECT (false alarm)
    blank = np.full((256, 256, 3), 20, np.uint8)
    _write(tmp_path / "c.png", blank)                      # blank defective: PASS -> REVIEW
    _write(tmp_path / "d.png", _surface(256, 256, 140))    # defective: REVIEW (score 160/255)
    listing = tmp_path / "list.txt"
    listing.write_text("# path label\na.png good\nb.png good\nc.png scratch\n"
                       f"{tmp_path / 'd.png'} scratch\n")
    model_file = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(BrightestPixel()), str(model_file))
    figures = evaluate.evaluate(model_file, listing)
    assert figures["images"] == 4 and figures["defective_images"] == 2
    assert figures["false_alarm_good_not_pass"] == 0.5
    assert figures["recall_defective_at_reject"] == 0.0
    assert figures["missed_defective_pass"] == 0.0  # the blank frame went to REVIEW
    assert figures["share_to_review"] == 0.5 and figures["quality_flagged"] == 1
    result = CliRunner().invoke(cli, ["model", "evaluate", str(model_file), str(listing),
                                      "--pass-threshold", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    assert '"false_alarm_good_not_pass": 1.0' in result.output


def test_an_out_of_domain_image_goes_to_review_whatever_its_score() -> None:
    results = [evaluate.ImageResult(evaluate.Sample(Path("a.png"), "scratch"), 0.9, 3.0, []),
               evaluate.ImageResult(evaluate.Sample(Path("b.png"), "good"), 0.1, 0.5, [])]
    figures = evaluate.summarize(results)
    assert figures["recall_defective_at_reject"] == 0.0 and figures["share_to_review"] == 0.5
    assert figures["out_of_domain_share"] == 0.5
    assert figures["ood_score_p50_p99_max"][-1] == 3.0


def test_file_list_lines_need_a_label(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n")
    with pytest.raises(ValueError, match=r"list\.txt:1"):
        evaluate.samples(listing)


def test_platt_fit_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    defective = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))
    scale, bias = calibrate.fit_platt(logits, defective)
    assert scale == pytest.approx(0.5, abs=0.03) and bias == pytest.approx(-1.0, abs=0.06)
    separated = np.array([-5.0, -4.0, 4.0, 5.0])
    scale, _ = calibrate.fit_platt(separated, separated > 0)
    assert math.isfinite(scale) and scale > 0  # Platt's targets keep it finite


def test_ood_statistics_put_the_threshold_at_the_held_out_quantile() -> None:
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.5, 3.0, 8)  # features of unlike spread: the covariance matters
    train_features = (rng.normal(0, 1, (5000, 8)) * scale).astype(np.float32)
    held = (rng.normal(0, 1, (2000, 8)) * scale).astype(np.float32)
    head = OodScore(8)
    section = calibrate.fit_ood(head, train_features, held)
    with torch.no_grad():
        in_domain = head(torch.from_numpy(held))[:, 0].numpy()
        shifted = head(torch.from_numpy(held + 4 * scale.astype(np.float32)))[:, 0].numpy()
    assert (in_domain > 1).mean() == pytest.approx(1 - calibrate.OOD_QUANTILE, abs=1e-3)
    assert (shifted > 1).mean() > 0.99
    assert section["threshold"].endswith("held-out tiles' distances")


def test_recommended_thresholds_meet_the_target_recall() -> None:
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.uniform(0.3, 1.0, 200), rng.uniform(0.0, 0.5, 200)])
    defective = np.arange(400) < 200
    chosen = calibrate.recommend_thresholds(scores, defective, 0.99)
    assert (scores[defective] < chosen["pass_below"]).mean() <= 0.01
    assert (scores[~defective] > chosen["reject_above"]).mean() <= 0.01
    assert chosen["pass_below"] <= chosen["reject_above"]


def test_schedule_is_torchs_one_cycle_keyed_to_progress() -> None:
    steps, lr = 200, 4e-3
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                    pct_start=0.1)
    warmup = (0.1 * steps - 1) / (steps - 1)
    for step in range(steps):
        factor, beta1 = train.one_cycle(step / (steps - 1), warmup)
        group = optimizer.param_groups[0]
        assert lr * factor == pytest.approx(group["lr"], rel=1e-6), step
        assert beta1 == pytest.approx(group["betas"][0], rel=1e-6), step
        optimizer.step()
        reference.step()
    assert train.one_cycle(1.0)[0] == pytest.approx(1 / train.DIV_END)


def test_from_frozen_reads_the_shipped_weights_back() -> None:
    model = calibrate.from_frozen(SHIPPED_V1, 5)
    shipped = torch.jit.load(str(SHIPPED_V1))
    probes = torch.stack(list(byom._probe_images().values()))
    with torch.inference_mode():
        mine, theirs = model(probes), shipped(probes)
    assert torch.equal(mine[0], theirs[0])
    assert torch.allclose(mine[2], theirs[2], atol=1e-5)
    assert (mine[1].float() - theirs[1].float()).abs().max() < 1e-3


def test_trainer_calibrates_adds_ood_and_survives_no_holdout(tmp_path: Path) -> None:
    data = tmp_path / "d"
    synth.generate(data, count=24, seed=4)
    out = tmp_path / "v" / "1"
    train.main([str(data), "--out", str(out), "--steps", "2", "--batch", "4",
                "--val-fraction", "0.5", "--target-recall", "0.9"])
    info = card.read(out)
    assert [o["name"] for o in info["outputs"]][-1] == "ood_score"
    assert info["calibration"]["recommended_thresholds"]["target_recall"] == 0.9
    assert info["service_path_metrics"]["at_recommended_thresholds"]["images"] == 12
    smoke = byom.smoke_test(out / "model.pt", 5)
    assert set(smoke["ood_score"]) == {"grey", "stripes", "noise", "scratch_and_spot"}
    # Nothing held out: no metrics and no calibration, but a model and a card (it crashed).
    out = tmp_path / "v" / "2"
    train.main([str(data), "--out", str(out), "--steps", "200", "--batch", "2",
                "--val-fraction", "0", "--max-minutes", "0.05"])
    info = card.read(out)
    assert "none" in info["metrics"] and info["calibration"]["method"].startswith("none")
    assert info["training"]["ended_by"] == "time budget" and info["training"]["steps"] < 200
    assert info["out_of_domain"]["threshold"].endswith("training tiles' distances")


def test_ood_score_flags_foreign_images_and_passes_in_domain_ones(tmp_path: Path) -> None:
    """The shipped weights' features with statistics of 30 synthetic images: noise and hard
    stripes are far out of domain, held-out synthetic surfaces within."""
    data = tmp_path / "d"
    synth.generate(data, count=40, seed=5)
    items = evaluate.samples(data)
    model = calibrate.from_frozen(SHIPPED_V1, 5)
    calibrate.calibrate(model, items[:30], items[30:])
    probes = byom._probe_images()
    with torch.inference_mode():
        foreign = model(torch.stack([probes["noise"], probes["stripes"]]))[3]
        in_domain = model(torch.from_numpy(np.stack(
            [evaluate.service_image(s.path).tiles[0] for s in items[30:]])))[3]
    assert (foreign > 1).all()
    assert (in_domain <= 1).float().mean() >= 0.9
    # Labels that rank backwards (good called defective): no calibration reverses the score.
    flipped = [evaluate.Sample(s.path, "good" if s.defective else "scratch") for s in items[30:]]
    section = calibrate.calibrate(calibrate.from_frozen(SHIPPED_V1, 5), items[:30], flipped)
    assert section["calibration"]["method"].startswith("none")
