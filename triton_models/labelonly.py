"""Label-only training: a defect classifier from folders of good and defective images (no
masks) whose heatmap shows where its evidence is.

    python -m triton_models.labelonly DATA --eval-data HELDOUT --out DIR --max-minutes 20

The network is a small convolutional encoder over 16x16-pixel cells of the 256x256 tile: the
input is halved by the mean and the minimum of each 2x2 block (a dark one-pixel crack
survives), then four 3x3 conv stages with max-pooling between them, and a 1x1 head scores
every cell for every defect class (0.175 GFLOPs per image, against 1.34 for the U-Net). The
image is a bag of cells (multiple-instance learning): its defect logit is a smooth maximum of
the cell logits, so the label's gradient reaches the cells that carry the evidence, and every
cell of a good image is a labelled negative. The same cell logits, upsampled and passed
through the image score's sigmoid, are the `defect_prob` heatmap; `class_map` is the cell's
best class where that probability is >= 0.5.

Training: every batch is half good, half defective (class balancing); label-preserving
augmentation (flips, shifts of up to 16 px, one brightness and contrast change for all
channels, so grayscale stays gray); AdamW with a cosine schedule over the time budget
(`--max-minutes`: the schedule ends when the budget does); a stratified `--val-fraction` of
the training images picks the best checkpoint by image AUROC (early stopping). The same run
fits the logistic-regression baseline on 64x64 thumbnails (`triton_models.baseline`) on the
same training images and reports both in the model card.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from triton_models import baseline, card, metrics, mvtec
from triton_models.export import export, gflops_per_image
from triton_models.net import MEAN, STD, conv_bn_relu, smooth_max
from triton_models.train import split

SHARPNESS = 4.0
WIDTHS = (16, 32, 64, 96)


class CellClassifier(nn.Module):
    """uint8 images in, the contract's outputs out, from per-cell defect logits."""

    def __init__(self, num_defect_classes: int, widths: tuple[int, ...] = WIDTHS,
                 sharpness: float = SHARPNESS) -> None:
        super().__init__()
        # The input is halved twice over: mean and minimum of each 2x2 block, so a dark
        # one-pixel crack survives the downscale; max-pooling between the stages keeps a
        # thin line's response where strided convolutions could step over it.
        layers: list[nn.Module] = [conv_bn_relu(6, widths[0])]
        for a, b in pairwise(widths):
            layers += [nn.MaxPool2d(2), conv_bn_relu(a, b)]
        layers.append(conv_bn_relu(widths[-1], widths[-1]))
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], num_defect_classes, 1)
        self.score_scale = nn.Parameter(torch.tensor(1.0))
        self.score_bias = nn.Parameter(torch.tensor(0.0))
        self.sharpness = sharpness
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def cells(self, images: Tensor) -> Tensor:
        """Per-cell, per-class defect logits (N,K,h,w) of uint8 images."""
        x = (images.float() / 255.0 - self.mean) / self.std
        x = torch.cat([F.avg_pool2d(x, 2), -F.max_pool2d(-x, 2)], 1)
        return self.head(self.encoder(x))

    def pooled(self, cells: Tensor) -> tuple[Tensor, Tensor]:
        """(image logit (N,), per-class presence logits (N,K)) of cell logits."""
        any_defect = torch.logsumexp(cells, 1, keepdim=True)
        image_logit = self.score_scale * smooth_max(any_defect, self.sharpness)[:, 0]
        return image_logit + self.score_bias, smooth_max(cells, self.sharpness)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cells = self.cells(images)
        image_logit, _ = self.pooled(cells)
        any_defect = torch.logsumexp(cells, 1, keepdim=True)
        heat = torch.sigmoid(self.score_scale * any_defect + self.score_bias)
        heat = F.interpolate(heat, size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        which = F.interpolate(cells, size=images.shape[-2:], mode="nearest").argmax(1) + 1
        class_map = torch.where(heat >= 0.5, which, torch.zeros_like(which)).to(torch.uint8)
        return class_map, heat.to(torch.float16), torch.sigmoid(image_logit).unsqueeze(1)


def augment(images: np.ndarray, rng: np.random.Generator, shift: int = 16) -> Tensor:
    """Label-preserving augmentation of uint8 (B,3,S,S): flips, shifts, brightness."""
    out = np.empty_like(images)
    size = images.shape[-1]
    for j, image in enumerate(images):
        padded = np.pad(image, ((0, 0), (shift, shift), (shift, shift)), mode="reflect")
        y0, x0 = rng.integers(0, 2 * shift + 1, size=2)
        image = padded[:, y0 : y0 + size, x0 : x0 + size]
        image = image[:, :, ::-1] if rng.integers(2) else image
        image = image[:, ::-1] if rng.integers(2) else image
        gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        out[j] = np.clip(image.astype(np.float32) * gain + offset, 0, 255)
    return torch.from_numpy(out)


def loss_fn(model: CellClassifier, images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    cells = model.cells(images)
    image_logit, presence = model.pooled(cells)
    loss = F.binary_cross_entropy_with_logits(image_logit, (labels > 0).float())
    good = labels == 0
    if good.any():  # a good image's every cell is a labelled negative
        cell_logit = model.score_scale * torch.logsumexp(cells[good], 1) + model.score_bias
        loss = loss + F.softplus(cell_logit).mean()
    if num_classes > 2:  # which defect: the pooled per-class maps against the folder
        onehot = F.one_hot(labels, num_classes)[:, 1:].float()
        loss = loss + F.binary_cross_entropy_with_logits(presence, onehot)
    return loss


@torch.inference_mode()
def scores(model: nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(images[i : i + batch]))[2][:, 0].numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def fit(data: mvtec.Dataset, val: mvtec.Dataset, max_seconds: float, seed: int,
        batch: int = 32, lr: float = 3e-3, max_steps: int | None = None,
        eval_every: int = 100) -> tuple[CellClassifier, dict[str, object]]:
    """Train until max_seconds (or max_steps); keep the checkpoint best on `val`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CellClassifier(len(data.classes) - 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    good, bad = np.flatnonzero(data.labels == 0), np.flatnonzero(data.labels > 0)
    best: tuple[float, int, dict[str, Tensor]] = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history = []
    start = time.monotonic()
    step = 0
    while True:
        elapsed = time.monotonic() - start
        progress = max(elapsed / max_seconds, step / max_steps if max_steps else 0.0)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / 50)
        for group in optimizer.param_groups:
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        index = np.concatenate([rng.choice(good, batch // 2),
                                rng.choice(bad, batch - batch // 2)])
        model.train()
        images = augment(data.images[index], rng)
        loss = loss_fn(model, images, torch.from_numpy(data.labels[index]), len(data.classes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % eval_every == 0:
            val_auroc = metrics.auroc(scores(model, val.images), val.labels > 0)
            history.append([step, round(time.monotonic() - start), round(val_auroc, 4)])
            print(f"step {step} loss {loss.item():.3f} val AUROC {val_auroc:.4f}", flush=True)
            if val_auroc > best[0]:
                best = (val_auroc, step, copy.deepcopy(model.state_dict()))
    if not history or history[-1][0] != step:  # the final weights get their evaluation too
        val_auroc = metrics.auroc(scores(model, val.images), val.labels > 0)
        history.append([step, round(time.monotonic() - start), round(val_auroc, 4)])
        if val_auroc > best[0]:
            best = (val_auroc, step, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return model, {
        "mode": "image labels only: multiple-instance cell classifier",
        "steps": step,
        "batch": batch,
        "lr": lr,
        "training_seconds": round(time.monotonic() - start, 1),
        "best_step": best[1],
        "best_val_auroc": round(best[0], 4),
        "val_history_step_seconds_auroc": history,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="training folder, MVTec AD layout")
    parser.add_argument("--eval-data", type=Path, required=True, help="held-out folder")
    parser.add_argument("--out", type=Path, required=True, help="version folder to write")
    parser.add_argument("--classes", default=None,
                        help="comma-separated defect classes (default: folders of test/)")
    parser.add_argument("--max-minutes", type=float, default=25.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="share of DATA that picks the checkpoint (early stopping)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    wall_start = time.monotonic()
    torch.set_num_threads(args.threads)
    classes = args.classes.split(",") if args.classes else None
    data = mvtec.load(args.data, classes, use_masks=False)
    held = mvtec.load(args.eval_data, data.classes[1:], use_masks=False)
    train_idx, val_idx = split(data, args.val_fraction, args.seed)
    model, info = fit(data.subset(train_idx), data.subset(val_idx), args.max_minutes * 60,
                      args.seed, args.batch, args.lr, args.max_steps)
    path = export(model, args.out / "model.pt")
    result = metrics.evaluate(torch.jit.load(str(path)), held)
    base = baseline.evaluate(data, held, seed=args.seed)
    model_card: dict[str, object] = {
        "name": "inspectq_seg",
        **card.file_facts(path),
        "classes": data.classes,
        "architecture": "cell-classifier (label-only, multiple-instance)",
        "params": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": gflops_per_image(model),
        "input": card.INPUT_CONTRACT,
        "outputs": card.OUTPUT_CONTRACT,
        "training": {
            "command": "python -m triton_models.labelonly " + shlex.join(
                sys.argv[1:] if argv is None else argv),
            "seed": args.seed, **info,
            "total_seconds_incl_loading_and_eval": round(time.monotonic() - wall_start, 1),
            "machine": f"{platform.machine()}, {args.threads} torch threads",
            "torch": torch.__version__,
        },
        "data": {"train": str(args.data), "heldout": str(args.eval_data),
                 "train_images": len(train_idx), "val_images": len(val_idx)},
        "metrics": result,
        "notes": [f"baseline in the same run: {json.dumps(base)}"],
    }
    card.write(args.out, model_card)
    print(json.dumps({"model": str(path), "training": info, "metrics": result,
                      "baseline": base}, indent=2))


if __name__ == "__main__":
    main()
