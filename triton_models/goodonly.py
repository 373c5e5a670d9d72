"""Good images only: a deviation model fitted on `train/good` alone, served through the same
contract.

    python -m triton_models.goodonly DATA --eval-data HELDOUT --out DIR

PaDiM-style, without downloaded weights: a fixed, seeded random convolutional filter bank
(three stride-2 stages, no training) describes every 4x4-pixel cell of a contrast-normalized
image by 227 numbers (its 3x3 neighbourhood of stage features plus the local mean colour),
minus the image's mean descriptor. One Gaussian of those descriptors is fitted to all cells
of all good images (shared by every position: surfaces are not aligned like MVTec objects),
and a cell's anomaly is its Mahalanobis distance (a 1x1 convolution by the whitening matrix
inside the model) divided by the image's median cell distance: a defect stands out from its
own surface, so a rougher surface type does not raise every score. Both self-references were
measured (synthetic held-out image AUROC 0.75 without them, 0.81 with the median ratio, 0.83
with both). The smoothed, upsampled map becomes `defect_prob` through a logistic map
calibrated on good images set aside from the fit (`--calib-fraction`): their median maximum
maps to 0.10 and their 99th percentile to 0.40 (the PASS threshold); `image_score` is the
same map applied to the image's largest cell distance. `class_map` is 1 (`anomaly`) where
`defect_prob` >= 0.5. The export takes uint8 (N,3,256,256) like every contract model.

`ood_score` (the contract's optional fourth output) is the median over the tile's cells
(every 4th) of their descriptors' Mahalanobis distance, not centred on the image, from the
good cells', divided by the 99.5% quantile of the calibration images' (1.0 = the
threshold): a surface unlike the good ones, while a defect on a few cells leaves the median
alone. Frames too dark, saturated, flat or blank are the service's image-quality checks'
job (`inspectq.quality`), before the model; adding the tile's robust colour statistics
(channel medians and interquartile ranges) to this score was measured and not kept: it
flagged 3.9% of in-domain synthetic images (0% without) and no more of a foreign set.

Train/serve parity: every image is decoded and cut into tiles exactly as the service does
(`inspectq.imaging`: an image of at most 256 px resized to one tile, a larger one cut into
native-scale tiles). The Gaussians are fitted on the good images' tiles; the calibration
takes each calibration image's maximum over its tiles (the service's image score); the
evaluation scores every held-out image as the service would, stitches the tiles' heatmaps
back to the image (`inspectq.imaging.stitch`) and reports image AUROC and pixel AUROC for
each defect class (its good images against that class; pixels of those images against the
class's masks).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inspectq.imaging import image_score, stitch
from triton_models import card, metrics, mvtec
from triton_models.evaluate import service_input
from triton_models.export import export, gflops_per_image

CLASSES = ["background", "anomaly"]
WIDTHS = (32, 64, 128)
LOGIT_MEDIAN, LOGIT_P99 = math.log(0.1 / 0.9), math.log(0.4 / 0.6)
#: ood_score 1.0: this quantile of the calibration images' out-of-domain distances.
OOD_QUANTILE = 0.995


class Deviation(nn.Module):
    """Random filter bank + Gaussian of good cells; contract outputs."""

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        convs = []
        cin = 3
        for w in widths:
            for stride in (2, 1):
                conv = nn.Conv2d(cin, w, 3, stride=stride, padding=1)
                nn.init.kaiming_normal_(conv.weight, generator=generator)
                nn.init.zeros_(conv.bias)
                convs.append(conv)
                cin = w
        self.convs = nn.ModuleList(convs)
        self.dim = sum(widths) + 3
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("whiten", torch.eye(self.dim))
        self.register_buffer("calib", torch.tensor([1.0, 0.0]))  # scale, offset of the logit
        # out of domain: a Gaussian of the good cells' descriptors as they are (not centred
        # on their image), and the median cell distance that is ood_score 1.0
        self.register_buffer("raw_mean", torch.zeros(self.dim))
        self.register_buffer("raw_whiten", torch.eye(self.dim))
        self.register_buffer("ood_threshold", torch.tensor(1.0))
        for p in self.parameters():
            p.requires_grad_(False)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(cell descriptors minus the image's mean one, the descriptors as they are), both
        (N,D,H/4,W/4), of uint8 images."""
        x = images.float() / 255.0
        flat = x.flatten(1)
        x = (x - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-3)
        stages = []
        y = x
        for i, conv in enumerate(self.convs):
            y = F.relu(conv(y))
            if i % 2 == 1:
                stages.append(y)
        size = stages[1].shape[-2:]
        parts = [F.adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(stages[0], size),
                 stages[1], F.interpolate(stages[2], size=size, mode="bilinear",
                                          align_corners=False)]
        f = F.avg_pool2d(torch.cat(parts, 1), 3, stride=1, padding=1)
        return f - f.mean((2, 3), keepdim=True), f

    def distance(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(smoothed Mahalanobis distance per cell (N,1,H/4,W/4) relative to the image's
        median cell, the out-of-domain distance (N,): the median over cells of the raw
        descriptors' distance from the good cells', robust to a defect on a few cells)."""
        centred, raw = self.features(images)
        z = torch.einsum("ed,ndhw->nehw", self.whiten, centred - self.mean.view(1, -1, 1, 1))
        d = F.avg_pool2d(z.pow(2).mean(1, keepdim=True).sqrt(), 3, stride=1, padding=1)
        median = d.flatten(1).median(1).values
        raw = raw[:, :, ::2, ::2] - self.raw_mean.view(1, -1, 1, 1)  # every 4th cell: cheap
        scaled = torch.einsum("ed,ndhw->nehw", self.raw_whiten, raw)
        domain = scaled.pow(2).mean(1).sqrt().flatten(1).median(1).values
        return d / median.view(-1, 1, 1, 1).clamp_min(1e-6), domain

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        d, domain = self.distance(images)
        logit = self.calib[0] * d + self.calib[1]
        heat = torch.sigmoid(F.interpolate(logit, size=images.shape[-2:], mode="bilinear",
                                           align_corners=False))[:, 0]
        image_score = torch.sigmoid(logit.flatten(1).amax(1, keepdim=True))
        class_map = (heat >= 0.5).to(torch.uint8)
        ood_score = (domain / self.ood_threshold).unsqueeze(1)
        return class_map, heat.to(torch.float16), image_score, ood_score


def whitening(second_moment: Tensor, mean: Tensor, shrink: float) -> Tensor:
    """W with W @ W.T = the inverse of the (shrunk) covariance: |W.T (f - mean)|^2 is the
    squared Mahalanobis distance."""
    cov = second_moment - torch.outer(mean, mean)
    cov += shrink * cov.diagonal().mean() * torch.eye(len(mean), dtype=cov.dtype)
    return torch.linalg.cholesky(torch.linalg.inv(cov)).T.float()


@torch.inference_mode()
def fit(model: Deviation, good: np.ndarray, calib: list[np.ndarray], batch: int = 16,
        shrink: float = 0.01) -> dict[str, object]:
    """Gaussians of the cells of the `good` tiles (uint8 N,3,S,S), centred on their image
    and as they are; the logistic map and the out-of-domain threshold from `calib`, one
    array of tiles per calibration image, each image taken as the service takes it (its
    maximum tile)."""
    moments = {name: (torch.zeros(model.dim, dtype=torch.float64),
                      torch.zeros(model.dim, model.dim, dtype=torch.float64))
               for name in ("centred", "raw")}
    n_cells = n_tiles = 0
    for i in range(0, len(good), batch):
        centred, raw = model.features(torch.from_numpy(good[i : i + batch]))
        for name, cells in (("centred", centred), ("raw", raw)):
            rows = cells.permute(0, 2, 3, 1).reshape(-1, model.dim).double()
            total, outer = moments[name]
            total += rows.sum(0)
            outer += rows.T @ rows
        n_cells += centred.shape[0] * centred.shape[2] * centred.shape[3]
        n_tiles += len(centred)
    for name, mean_buffer, whiten_buffer in (("centred", model.mean, model.whiten),
                                             ("raw", model.raw_mean, model.raw_whiten)):
        total, outer = moments[name]
        mean_buffer.copy_((total / n_cells).float())
        whiten_buffer.copy_(whitening(outer / n_cells, total / n_cells, shrink))
    distances = [model.distance(torch.from_numpy(tiles)) for tiles in calib]
    maxima = np.array([float(d.amax()) for d, _ in distances])
    domains = np.array([float(domain.amax()) for _, domain in distances])
    model.ood_threshold.fill_(float(np.quantile(domains, OOD_QUANTILE)))
    p50, p99 = np.quantile(maxima, [0.5, 0.99])
    scale = (LOGIT_P99 - LOGIT_MEDIAN) / max(float(p99 - p50), 1e-6)
    model.calib.copy_(torch.tensor([scale, LOGIT_MEDIAN - scale * float(p50)]))
    return {"tiles": n_tiles, "cells": n_cells, "descriptor_dims": model.dim,
            "calibration_good_max_distance_p50_p99": [round(float(p50), 4),
                                                      round(float(p99), 4)],
            "ood_threshold_median_cell_distance": round(float(model.ood_threshold), 4)}


PIXEL_BINS = 4096


def pixel_histograms(prob: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of defect and of good pixels in `PIXEL_BINS` bins of the score 0..1: summed
    over images, they give the pixel AUROC of a whole set without keeping its maps."""
    idx = np.clip((prob.ravel() * PIXEL_BINS).astype(np.int64), 0, PIXEL_BINS - 1)
    pos = np.bincount(idx[truth.ravel()], minlength=PIXEL_BINS).astype(np.float64)
    neg = np.bincount(idx[~truth.ravel()], minlength=PIXEL_BINS).astype(np.float64)
    return pos, neg


def histogram_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC from `pixel_histograms` counts (ties within a bin count half)."""
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float(((pos * below).sum() + 0.5 * (pos * neg).sum()) / (pos.sum() * neg.sum()))


def pixel_auroc(prob: np.ndarray, truth: np.ndarray) -> float:
    """AUROC of per-pixel scores in 0..1 (by `PIXEL_BINS` histogram bins)."""
    return histogram_auroc(*pixel_histograms(prob, truth))


@torch.inference_mode()
def evaluate(model: nn.Module, held: mvtec.Dataset) -> dict[str, object]:
    """Image AUROC (contract image_score) and pixel AUROC (defect_prob) per defect class,
    every image scored as the service scores it: its tiles, the max tile score, the tiles'
    heatmaps stitched back (`held` loaded at the service's scale, `mvtec.load(size=None)`)."""
    scores = np.empty(len(held.images))
    histograms = {k: [np.zeros(PIXEL_BINS), np.zeros(PIXEL_BINS)]
                  for k in range(1, len(held.classes))}
    for i, image in enumerate(held.images):
        layout = service_input(image)
        class_maps, probs, tile_scores, _ = model(torch.from_numpy(layout.tiles))
        scores[i] = image_score(tile_scores[:, 0].numpy())
        if held.masks is None:
            continue
        _, prob = stitch(layout, class_maps.numpy(), probs.float().numpy())
        for k, (pos, neg) in histograms.items():  # a good image counts for every class
            if held.labels[i] in (0, k):
                more_pos, more_neg = pixel_histograms(prob, held.masks[i] == k)
                pos += more_pos
                neg += more_neg
    good = held.labels == 0
    result: dict[str, object] = {
        "images": len(scores),
        "defective_images": int((~good).sum()),
        "good_images": int(good.sum()),
        "image_auroc_all": round(metrics.auroc(scores, ~good), 4),
        f"recall_defective_at_reject_{metrics.REJECT_ABOVE}":
            round(float((scores[~good] > metrics.REJECT_ABOVE).mean()), 4),
        f"false_alarm_good_at_pass_{metrics.PASS_BELOW}":
            round(float((scores[good] >= metrics.PASS_BELOW).mean()), 4),
    }
    per_class = {}
    for k, name in enumerate(held.classes[1:], start=1):
        pick = good | (held.labels == k)
        entry: dict[str, object] = {
            "images": int((held.labels == k).sum()),
            "image_auroc": round(metrics.auroc(scores[pick], held.labels[pick] == k), 4)}
        if held.masks is not None:
            entry["pixel_auroc"] = round(histogram_auroc(*histograms[k]), 4)
        per_class[name] = entry
    result["per_defect_class"] = per_class
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder whose train/good images are used")
    parser.add_argument("--eval-data", type=Path, required=True, help="held-out folder")
    parser.add_argument("--out", type=Path, required=True, help="version folder to write")
    parser.add_argument("--calib-fraction", type=float, default=0.2,
                        help="share of train/good kept out of the fit to calibrate the score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    wall_start = time.monotonic()
    torch.set_num_threads(args.threads)
    folder = args.data / "train" / "good"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in mvtec.SUFFIXES)
    if len(files) < 2:
        raise SystemExit(f"{folder}: needs at least 2 good images")
    tiles = [service_input(mvtec.read_rgb(f, None)).tiles for f in files]
    order = np.random.default_rng(args.seed).permutation(len(files))
    n_calib = max(1, round(len(files) * args.calib_fraction))
    model = Deviation(args.seed)
    start = time.monotonic()
    info = fit(model, np.concatenate([tiles[i] for i in np.sort(order[n_calib:])]),
               [tiles[i] for i in np.sort(order[:n_calib])])
    fit_seconds = round(time.monotonic() - start, 1)
    path = export(model, args.out / "model.pt")
    held = mvtec.load(args.eval_data, size=None)
    result = evaluate(torch.jit.load(str(path)), held)
    model_card: dict[str, object] = {
        "name": "inspectq_seg",
        **card.file_facts(path),
        "classes": CLASSES,
        "architecture": "good-only deviation (random filter bank + Gaussian of good cells)",
        "params": sum(b.numel() for b in model.state_dict().values()),
        "gflops_per_image": gflops_per_image(model),
        "input": card.INPUT_CONTRACT,
        "outputs": [*card.OUTPUT_CONTRACT, card.OOD_OUTPUT],
        "training": {
            "command": "python -m triton_models.goodonly " + shlex.join(
                sys.argv[1:] if argv is None else argv),
            "seed": args.seed,
            "mode": "good images only",
            "good_images_fit": len(files) - n_calib,
            "good_images_calibration": n_calib,
            **info,
            "training_seconds": fit_seconds,
            "total_seconds_incl_loading_and_eval": round(time.monotonic() - wall_start, 1),
            "machine": f"{platform.machine()}, {args.threads} torch threads",
            "torch": torch.__version__,
        },
        "data": {"train": str(args.data), "heldout": str(args.eval_data)},
        "metrics": {"image_auroc": result["image_auroc_all"], **result},
    }
    print(json.dumps({"model": str(path), "fit_seconds": fit_seconds, "metrics": result},
                     indent=2))
    card.write(args.out, model_card)


if __name__ == "__main__":
    main()
