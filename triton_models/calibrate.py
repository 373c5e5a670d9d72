"""After training: calibrate the image score and fit the out-of-domain statistics, both kept
in the exported file (buffers of `InspectqSeg`, see `triton_models/net.py`).

* **Calibration** (Platt scaling): on held-out images scored through the service's path
  (`triton_models.evaluate`: native-scale 256 px tiles, max over tiles), a logistic fit of
  "image is defective" on the image logit (the max tile logit), with Platt's smoothed targets
  so a perfectly separated set still gives a finite slope. The served `image_score` is then
  the share of defective images among held-out images of that score, at the held-out set's
  share of defective images: PASS below 0.40 and REJECT above 0.65 mean what they say for
  data like it. Monotone, so the image AUROC is unchanged.
* **Out of domain**: the mean and (shrunk) inverse covariance of the pooled encoder
  features of the training tiles; a tile's Mahalanobis distance divided by the
  `OOD_QUANTILE` of the held-out tiles' distances (the training tiles' when nothing is held
  out) is `ood_score`: 1.0 is the threshold, above 1.0 is out of domain.
* **Thresholds for a target recall** (`--target-recall 0.99`): the PASS threshold that lets
  at most 1 - target of the held-out defective images PASS, the REJECT threshold that
  rejects at most 1 - target of the good ones.

`python -m triton_models.calibrate MODEL.pt ...` applies both to a file the trainer made
earlier (its frozen weights are read back into an `InspectqSeg`), without retraining:

    python -m triton_models.calibrate triton_models/repository/inspectq_seg/1/model.pt \
        --train-data var/synth-train --calib-data var/synth-calib \
        --eval-data var/synth-heldout --out var/calibrated/2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from triton_models import card, evaluate, metrics, mvtec
from triton_models.evaluate import Sample
from triton_models.export import export
from triton_models.net import POOL_SHARPNESS, InspectqSeg, OodScore, UNet
from triton_models.verify import sha256_of

#: The ood_score threshold: this quantile of the held-out (in-domain) tiles' distances.
OOD_QUANTILE = 0.995
#: Covariance shrinkage towards its mean variance (240 features, a few thousand tiles).
OOD_SHRINKAGE = 0.1


@torch.inference_mode()
def tile_logits_and_features(model: InspectqSeg, items: list[Sample]
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Through the service's tiling: each image's uncalibrated logit (the max over its
    tiles), and every tile's pooled features (tiles, D)."""
    model.eval()
    logits: list[float] = []
    features: list[np.ndarray] = []
    for tiles, owners, _ in evaluate.tile_batches(items):
        tile_logits, tile_features = model.logits_and_features(
            model.normalize(torch.from_numpy(tiles)))
        image_logit = model.pool(tile_logits)[0].numpy()
        owner = np.array(owners)
        logits += [float(image_logit[owner == i].max()) for i in dict.fromkeys(owners)]
        features.append(tile_features.numpy())
    return np.array(logits), np.concatenate(features)


def fit_platt(logits: np.ndarray, defective: np.ndarray) -> tuple[float, float]:
    """(scale, bias) of sigmoid(scale * logit + bias) by Newton's method on the log loss
    against Platt's targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2)."""
    positives, negatives = int(defective.sum()), int((~defective).sum())
    if not positives or not negatives:
        raise ValueError("calibration needs good and defective held-out images")
    target = np.where(defective, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    x = np.stack([logits, np.ones_like(logits)], 1).astype(np.float64)

    def loss(w: np.ndarray) -> float:
        z = x @ w  # log loss of sigmoid(z) against the soft targets, written stably
        return float(np.sum(np.logaddexp(0, z) - target * z))

    w = np.array([1.0, 0.0])
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -40, 40)))
        gradient = x.T @ (p - target)
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0  # backtracking: a full Newton step can overshoot far from the optimum
        while loss(w - size * step) > loss(w) and size > 1e-8:
            size /= 2
        w -= size * step
        if np.abs(size * step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


@torch.no_grad()
def fit_ood(head: OodScore, train_features: np.ndarray,
            heldout_features: np.ndarray | None) -> dict[str, Any]:
    """Fill `head` (any model's `OodScore`): the mean and inverse covariance of the training
    tiles' features (shrunk by OOD_SHRINKAGE towards the mean variance, so it inverts
    stably), and the threshold, the OOD_QUANTILE of the held-out tiles' distances (of the
    training tiles' without held-out ones: those sit closer, fitted on themselves). Returns
    the card section."""
    mean = train_features.mean(0)
    cov = np.cov(train_features.astype(np.float64), rowvar=False)
    dim = cov.shape[0]
    cov = (1 - OOD_SHRINKAGE) * cov + OOD_SHRINKAGE * np.trace(cov) / dim * np.eye(dim)
    _set(head.mean, mean)
    _set(head.precision, np.linalg.inv(cov))
    reference = train_features if heldout_features is None else heldout_features
    threshold = float(np.quantile(head.distance(torch.from_numpy(reference)).numpy(),
                                  OOD_QUANTILE))
    _set(head.threshold, threshold)
    return {
        "output": "ood_score: Mahalanobis distance of a tile's pooled encoder features from "
                  "the training tiles' / threshold; > 1.0 is out of domain",
        "features": dim, "training_tiles": len(train_features), "shrinkage": OOD_SHRINKAGE,
        "threshold": f"{OOD_QUANTILE:.1%} quantile of the "
                     f"{'training' if heldout_features is None else 'held-out'} tiles' "
                     "distances",
        "threshold_distance": round(threshold, 3),
    }


def recommend_thresholds(scores: np.ndarray, defective: np.ndarray,
                         target_recall: float) -> dict[str, float]:
    """PASS below p lets at most (1 - target) of the defective images through; REJECT above
    r rejects at most (1 - target) of the good ones (r >= p)."""
    allowed = 1.0 - target_recall
    bad, good = np.sort(scores[defective]), np.sort(scores[~defective])
    # p: the largest score at or below which at most `allowed` of the defective lie
    misses = int(np.floor(allowed * len(bad)))
    pass_below = float(bad[misses]) if misses < len(bad) else 1.0
    rejects = int(np.floor(allowed * len(good)))
    reject_above = float(good[len(good) - 1 - rejects]) if rejects < len(good) else 0.0
    return {"pass_below": round(pass_below, 4),
            "reject_above": round(max(reject_above, pass_below), 4)}


def _set(buffer: torch.Tensor, value: Any) -> None:
    buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype))


def calibrate(model: InspectqSeg, train_items: list[Sample], heldout: list[Sample] | None,
              target_recall: float | None = None) -> dict[str, Any]:
    """Fit the out-of-domain statistics on `train_items` and, when held-out images exist,
    the calibration (and the OOD threshold) on them; returns the card section."""
    start = time.monotonic()
    _, train_features = tile_logits_and_features(model, train_items)
    section: dict[str, Any] = {}
    heldout_features = None
    defective = np.array([s.defective for s in heldout or []])
    if heldout:
        logits, heldout_features = tile_logits_and_features(model, heldout)
    both_kinds = bool(defective.any() and not defective.all())
    scale, bias = fit_platt(logits, defective) if both_kinds else (0.0, 0.0)
    if scale > 0:
        _set(model.calib_scale, scale)
        _set(model.calib_bias, bias)
        section["calibration"] = {
            "method": "Platt scaling of the image logit (max over the service's tiles)",
            "scale": round(scale, 5), "bias": round(bias, 5),
            "images": len(heldout), "defective_images": int(defective.sum()),
        }
    else:  # a slope <= 0 would reverse the ranking: leave such a score as the network made it
        scale, bias = 1.0, 0.0  # the served score: the network's own sigmoid
        section["calibration"] = {"method": "none: no held-out good and defective images, or "
                                            "their image logits rank the good ones higher (the "
                                            "score is the network's own sigmoid, uncalibrated)"}
    if target_recall is not None and both_kinds:  # thresholds for the score as served
        scores = 1 / (1 + np.exp(-(scale * logits + bias)))
        section["calibration"]["recommended_thresholds"] = {
            "target_recall": target_recall,
            **recommend_thresholds(scores, defective, target_recall)}
    section["out_of_domain"] = fit_ood(model.ood, train_features, heldout_features)
    section["post_training_seconds"] = round(time.monotonic() - start, 1)
    return section


def from_frozen(path: Path, num_classes: int) -> InspectqSeg:
    """Read a frozen TorchScript file of the trainer's `unet-s2` model back into an eager
    `InspectqSeg`: freezing folded each BatchNorm into its convolution's weight and bias,
    so each BatchNorm becomes the identity plus that bias."""
    frozen = torch.jit.load(str(path), map_location="cpu")
    convs = [n for n in frozen.graph.nodes() if n.kind() == "aten::conv2d"]
    constants = [[i.toIValue() for i in list(n.inputs())[1:3]] for n in convs]
    model = InspectqSeg(UNet(num_classes, stem_stride=2), POOL_SHARPNESS).eval()
    modules = [m for m in model.backbone.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = []
    for k, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            following = modules[k + 1] if k + 1 < len(modules) else None
            pairs.append((module, following if isinstance(following, nn.BatchNorm2d) else None))
    if len(pairs) != len(constants):
        raise ValueError(f"{path}: {len(constants)} convolutions, the unet-s2 model has "
                         f"{len(pairs)}: not a model of this trainer")
    with torch.no_grad():
        for (conv, norm), (weight, bias) in zip(pairs, constants, strict=True):
            conv.weight.copy_(weight)
            if norm is None:
                conv.bias.copy_(bias)
            else:
                norm.weight.fill_(1.0)
                norm.bias.copy_(bias)
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
        affine = [n for n in frozen.graph.nodes() if n.kind() in ("aten::mul", "aten::add")]
        scalars = [i.toIValue() for n in affine for i in n.inputs()
                   if i.node().kind() == "prim::Constant"
                   and isinstance(i.toIValue(), torch.Tensor) and i.toIValue().dim() == 0]
        if len(scalars) != 2:
            raise ValueError(f"{path}: expected the image score's scale and bias")
        model.score_scale.copy_(scalars[0])
        model.score_bias.copy_(scalars[1])
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Calibrate the image score and add the "
                                                 "out-of-domain score to a trainer's model.")
    parser.add_argument("model", type=Path, help="TorchScript file made by triton_models.train")
    parser.add_argument("--train-data", type=Path, required=True,
                        help="the training images (out-of-domain statistics)")
    parser.add_argument("--calib-data", type=Path, required=True,
                        help="held-out images for the calibration and the OOD threshold")
    parser.add_argument("--eval-data", type=Path, default=None,
                        help="held-out images for the card's metrics (default: --calib-data)")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt + card")
    parser.add_argument("--target-recall", type=float, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    source_card = card.read(args.model.parent)
    classes = source_card["classes"]
    model = from_frozen(args.model, len(classes))
    section = calibrate(model, evaluate.samples(args.train_data),
                        evaluate.samples(args.calib_data), args.target_recall)
    path = export(model, args.out / "model.pt")
    scripted = torch.jit.load(str(path), map_location="cpu")
    eval_data = args.eval_data or args.calib_data
    figures = evaluate.card_figures(scripted, evaluate.samples(eval_data),
                                    section["calibration"].get("recommended_thresholds"))
    # The source card's pixel and score metrics were of the uncalibrated file: measure again
    # (pixel metrics need the MVTec layout's masks).
    source_card.pop("metrics", None)
    if (eval_data / "test").is_dir():
        source_card["metrics"] = metrics.evaluate(scripted, mvtec.load(eval_data, classes[1:]))
    new_card = {**source_card, **section,
                "sha256": sha256_of(path), "size_bytes": path.stat().st_size,
                "outputs": [*card.OUTPUT_CONTRACT, card.OOD_OUTPUT],
                "service_path_metrics": figures,
                "post_training": {
                    "command": "python -m triton_models.calibrate "
                               + shlex.join(sys.argv[1:] if argv is None else argv),
                    "source_sha256": source_card["sha256"]}}
    card.write(args.out, new_card)
    print(json.dumps({"model": str(path), **section, "service_path_metrics": figures},
                     indent=2))


if __name__ == "__main__":
    main()
