"""Train the inspectq segmentation model on any MVTec-AD-layout folder, export TorchScript and
write the model card.

    python -m triton_models.train DATA --eval-data HELDOUT \
        --out triton_models/repository/inspectq_seg/1

With ground_truth/ masks: multi-class segmentation (cross-entropy + Dice on pixels) plus the
image score (binary cross-entropy of the pooled defect map against "crop holds a defect").
Without ground_truth/ (or with --label-only): image labels alone, multiple-instance style,
by default with the `cells-coarse` architecture (`triton_models.labelonly`: per-cell logits
pooled by a smooth maximum, balanced batches, early stopping on a share of the training
images, trained on the service's tiles); the same run fits the thumbnail logistic-regression
baseline and reports it beside the model.
`--arch unet-s2 --label-only` trains the U-Net from labels instead (its pooled defect map
supervised by "image is defective", the per-class maps by the folder): the comparison.

Without --eval-data, a stratified --val-fraction of the images is held out for the metrics
(0: nothing held out, no metrics and no calibration).

After training (`triton_models.calibrate`): the out-of-domain statistics of the training
images and, on held-out images (--calib-data, else the held-out set), the calibration of the
image score, both kept in the exported file; the card's decision figures come from scoring
the held-out files exactly as the service does (`triton_models.evaluate`).

Schedule: one cycle (warm-up over the first 10%, then cosine decay to ~0, as torch's
OneCycleLR) over the run's progress, the larger of steps done / --steps and time spent /
--max-minutes, so a run stopped by its time budget ends on a fully decayed learning rate.
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
from torch import Tensor
from tqdm import tqdm

from triton_models import baseline, calibrate, card, evaluate, labelonly, metrics, mvtec
from triton_models.export import export, gflops_per_image
from triton_models.net import (
    ARCHITECTURES,
    CELL_INPUT_POOL,
    LABEL_ONLY_CELL,
    LABEL_ONLY_SHARPNESS,
    POOL_SHARPNESS,
    InspectqSeg,
    build_backbone,
)

MODEL_NAME = "inspectq_seg"
WARMUP = 0.1  # share of the run spent warming the learning rate up
MOMENTUM = (0.95, 0.85)  # AdamW's beta1 at the start and at the peak learning rate
DIV_START, DIV_END = 25.0, 25.0 * 1e4  # the learning rate's divisors at the start and end


def one_cycle(progress: float, warmup: float = WARMUP) -> tuple[float, float]:
    """(learning-rate factor, beta1) at `progress` 0..1 of the run: OneCycleLR's cosine
    shape, from 1/DIV_START up to 1 over `warmup`, then down to 1/DIV_END."""
    if progress <= warmup:
        pct, lr = progress / warmup, (1 / DIV_START, 1.0)
        momentum = MOMENTUM
    else:
        pct = min((progress - warmup) / (1 - warmup), 1.0)
        lr, momentum = (1.0, 1 / DIV_END), MOMENTUM[::-1]
    cos_out = math.cos(math.pi * pct) + 1
    return (lr[1] + (lr[0] - lr[1]) / 2 * cos_out,
            momentum[1] + (momentum[0] - momentum[1]) / 2 * cos_out)


def make_batch(data: mvtec.Dataset, index: np.ndarray, crop: int,
               rng: np.random.Generator) -> tuple[Tensor, Tensor | None, Tensor]:
    """Augmented uint8 images (B,3,crop,crop), masks (B,crop,crop) or None, labels (B,).

    Augmentation: random crop, flips, 90-degree turns (surfaces have no preferred
    orientation), and a brightness/contrast change. With masks, the label is whether the
    crop still holds defect pixels; without masks the crop is the whole image (a crop could
    cut the defect out and make the label wrong). Images need not be square (native scale):
    then only half turns keep the batch's shape."""
    height, width = data.images.shape[-2:]
    if crop >= min(height, width):
        crop_h, crop_w = height, width
    else:
        crop_h = crop_w = crop
    images, masks, labels = [], [], []
    for i in index:
        y0, x0 = (0, 0) if crop_h == height else (
            int(v) for v in rng.integers(0, [height - crop + 1, width - crop + 1]))
        if data.masks is not None and data.labels[i] > 0 and crop_h < height \
                and rng.random() < 0.5:
            # Defects cover ~1% of the pixels: half the crops of defective images are placed
            # over a random defect pixel so thin and small defects are seen often enough.
            ys, xs = np.nonzero(data.masks[i])
            if len(ys):
                pick = rng.integers(len(ys))
                y0 = int(np.clip(ys[pick] - rng.integers(crop), 0, height - crop))
                x0 = int(np.clip(xs[pick] - rng.integers(crop), 0, width - crop))
        window = (slice(y0, y0 + crop_h), slice(x0, x0 + crop_w))
        image = data.images[i, :, window[0], window[1]]
        mask = None if data.masks is None else data.masks[i, window[0], window[1]]
        turns = int(rng.integers(4)) if crop_h == crop_w else 2 * int(rng.integers(2))
        flip = bool(rng.integers(2))
        image = np.rot90(image, turns, axes=(1, 2))
        image = image[:, :, ::-1] if flip else image
        gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        image = np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
        images.append(image)
        if mask is not None:
            mask = np.rot90(mask, turns)
            mask = mask[:, ::-1] if flip else mask
            masks.append(np.ascontiguousarray(mask))
            labels.append(int(mask.max()))
        else:
            labels.append(int(data.labels[i]))
    mask_t = torch.from_numpy(np.stack(masks)).long() if masks else None
    return torch.from_numpy(np.stack(images)), mask_t, torch.tensor(labels)


def loss_fn(model: InspectqSeg, images: Tensor, masks: Tensor | None, labels: Tensor,
            num_classes: int) -> Tensor:
    logits, image_logit, presence = model.heads(model.normalize(images))
    image_loss = F.binary_cross_entropy_with_logits(image_logit, (labels > 0).float())
    if masks is None:
        # Image labels only. A good image still labels every one of its pixels (background);
        # defective ones only say "somewhere", through the pooled maps.
        onehot = F.one_hot(labels, num_classes)[:, 1:].float()
        loss = image_loss + F.binary_cross_entropy_with_logits(presence, onehot)
        good = labels == 0
        if good.any():
            background = torch.zeros_like(logits[good][:, 0], dtype=torch.long)
            loss = loss + F.cross_entropy(logits[good], background)
        return loss
    weight = torch.ones(num_classes)
    weight[1:] = 3.0
    ce = F.cross_entropy(logits, masks, weight=weight)
    prob = torch.softmax(logits, 1)[:, 1:]
    target = F.one_hot(masks, num_classes).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * target).sum((0, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1)
    return ce + dice.mean() + 0.5 * image_loss


def train(data: mvtec.Dataset, arch: str, steps: int, batch: int, crop: int, lr: float,
          seed: int, max_seconds: float | None = None) -> tuple[InspectqSeg, dict[str, object]]:
    """Train from scratch; stops after `steps` or `max_seconds`, whichever comes first.

    The learning rate follows `one_cycle` over the progress (see the module docstring)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_classes = len(data.classes)
    backbone = build_backbone(arch, num_classes)
    if data.masks is None:
        model = InspectqSeg(backbone, LABEL_ONLY_SHARPNESS, LABEL_ONLY_CELL)
    else:
        model = InspectqSeg(backbone, POOL_SHARPNESS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # OneCycleLR's phase boundary: the peak at step WARMUP * steps - 1 of steps - 1.
    warmup = (WARMUP * steps - 1) / max(steps - 1, 1) if steps > 10 else WARMUP
    if data.masks is None:
        crop = max(data.images.shape[-2:])  # the whole image
    model.train()
    start = time.monotonic()
    done = 0
    bar = tqdm(range(steps), desc=f"train {arch}", unit="step")
    for step in bar:
        progress = max(step / max(steps - 1, 1),
                       0.0 if max_seconds is None else (time.monotonic() - start) / max_seconds)
        factor, beta1 = one_cycle(min(progress, 1.0), warmup)
        for group in optimizer.param_groups:
            group["lr"], group["betas"] = lr * factor, (beta1, group["betas"][1])
        index = rng.integers(0, len(data.labels), size=batch)
        images, masks, labels = make_batch(data, index, crop, rng)
        loss = loss_fn(model, images, masks, labels, num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr * factor:.1e}")
        if progress >= 1.0:
            break
    bar.close()
    model.eval()
    info: dict[str, object] = {
        "steps": done,
        "batch": batch,
        "crop": crop,
        "lr": lr,
        "seconds": round(time.monotonic() - start, 1),
        "seconds_per_step": round((time.monotonic() - start) / max(done, 1), 3),
        "ended_by": "time budget" if done < steps else "steps",
        "mode": "image labels only" if data.masks is None else "pixel masks",
    }
    return model, info


def samples_of(data: mvtec.Dataset, root: Path) -> list[evaluate.Sample]:
    """The files of `data` (loaded from `root`) with their labels, for the service's path."""
    return [evaluate.Sample(root / name, evaluate.GOOD if k == 0 else data.classes[k])
            for name, k in zip(data.files, data.labels, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="training folder, MVTec AD layout")
    parser.add_argument("--eval-data", type=Path, default=None,
                        help="held-out folder (default: hold out --val-fraction of DATA)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of DATA held out when there is no --eval-data (0: none)")
    parser.add_argument("--calib-data", type=Path, default=None,
                        help="held-out images to calibrate the score on (default: the "
                             "held-out set); any form `inspectq model evaluate` reads")
    parser.add_argument("--target-recall", type=float, default=None,
                        help="recommend thresholds that let at most 1 - this share of the "
                             "defective held-out images PASS (e.g. 0.99)")
    parser.add_argument("--out", type=Path, required=True,
                        help="version folder to write model.pt and the model card into")
    parser.add_argument("--classes", default=None,
                        help="comma-separated defect classes in output order "
                             "(default: sorted folder names of test/)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=None,
                        help="default: unet-s2 with masks, cells-coarse with image labels only")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="training time budget; the schedule ends with it (--steps is "
                             "then an upper bound)")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 16 (U-Net), 32 (cells)")
    parser.add_argument("--crop", type=int, default=128,
                        help="training crop size with masks (full image without masks)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate; default: 4e-3 (U-Net), 3e-3 (cells)")
    parser.add_argument("--no-turns", action="store_true",
                        help="label-only: the parts have an up and a left (a rolling "
                             "direction, an oriented pattern), so train on left-right and "
                             "up-down mirrors only and serve one pass; by default windows "
                             "are also turned and the model averages its tile's 8 turns and "
                             "mirrors (8 times the compute)")
    parser.add_argument("--checkpoint-fraction", type=float, default=0.15,
                        help="cells: share of the training images that picks the best "
                             "checkpoint (early stopping)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--label-only", action="store_true",
                        help="ignore ground_truth/ even if present (image labels only)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize every image to this (default: as the service sees them: "
                             "up to 256 px resized to 256, larger kept at native scale)")
    args = parser.parse_args(argv)

    wall_start = time.monotonic()
    torch.set_num_threads(args.threads)
    classes = args.classes.split(",") if args.classes else None
    data = mvtec.load(args.data, classes, args.size, use_masks=not args.label_only)
    if args.eval_data is not None:
        train_data = data
        held = mvtec.load(args.eval_data, data.classes[1:], args.size)
        held_desc = str(args.eval_data)
    else:
        train_idx, held_idx = mvtec.split(data, args.val_fraction, args.seed)
        train_data, held = data.subset(train_idx), data.subset(held_idx)
        held_desc = f"{args.val_fraction:.0%} of {args.data} held out (seed {args.seed})"

    held_items = samples_of(held, args.eval_data or args.data)
    arch = args.arch or ("unet-s2" if train_data.masks is not None else "cells-coarse")
    budget = None if args.max_minutes is None else args.max_minutes * 60
    if arch in CELL_INPUT_POOL:
        if train_data.masks is not None:
            parser.error(f"--arch {arch} learns from image labels only: add --label-only")
        fit_idx, pick_idx = mvtec.split(train_data, args.checkpoint_fraction, args.seed)
        model, info = labelonly.fit(
            train_data.subset(fit_idx), train_data.subset(pick_idx),
            math.inf if budget is None else budget, args.seed, args.batch or 32,
            args.lr or 3e-3, args.steps, input_pool=CELL_INPUT_POOL[arch],
            dihedral=not args.no_turns)
    else:
        model, info = train(train_data, arch, args.steps, args.batch or 16, args.crop,
                            args.lr or 4e-3, args.seed, budget)
    post = calibrate.calibrate(
        model, samples_of(train_data, args.data),
        evaluate.samples(args.calib_data) if args.calib_data else held_items,
        args.target_recall)
    model_path = export(model, args.out / "model.pt")
    scripted = torch.jit.load(str(model_path))
    result: dict[str, object] = {"none": "no held-out images (--val-fraction 0)"}
    service: dict[str, object] = {}
    if held_items:
        result = metrics.evaluate(scripted, held)
        if train_data.masks is None:  # the bar a label-only model must clear, same data
            result["baseline_thumbnail_logreg"] = baseline.evaluate(train_data, held,
                                                                    seed=args.seed)
        service = evaluate.card_figures(scripted, held_items,
                                        post["calibration"].get("recommended_thresholds"))
    wall = round(time.monotonic() - wall_start, 1)

    def describe(folder: Path, count: int) -> dict[str, object]:
        summary_file = folder / "dataset.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        return {"path": str(folder), "images_used": count, **summary}

    model_card: dict[str, object] = {
        "name": MODEL_NAME,
        **card.file_facts(model_path),
        "classes": data.classes,
        "architecture": arch,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": gflops_per_image(model, mvtec.TILE),
        "input": card.INPUT_CONTRACT,
        "outputs": [*card.OUTPUT_CONTRACT, card.OOD_OUTPUT],
        "training": {
            "command": "python -m triton_models.train " + shlex.join(sys.argv[1:] if argv is None
                                                                      else argv),
            "seed": args.seed,
            **info,
            "training_seconds": info["seconds"],
            "total_seconds_incl_loading_and_eval": wall,
            "threads": args.threads,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__,
        },
        "data": {"train": describe(args.data, len(train_data.labels)),
                 "heldout": {**describe(args.eval_data, len(held.labels))}
                 if args.eval_data else held_desc,
                 **({"calibration": str(args.calib_data)} if args.calib_data else {})},
        "metrics": result,
        "service_path_metrics": service,
        **post,
    }
    model_card["training"].pop("seconds")  # type: ignore[union-attr]
    card.write(args.out, model_card)
    print(json.dumps({"model": str(model_path), "training_seconds": info["seconds"],
                      "total_seconds": wall, "metrics": result,
                      "service_path_metrics": service, **post}, indent=2))
    if held_items and math.isnan(float(result["image_auroc"])):  # type: ignore[arg-type]
        print("warning: the held-out set lacks good or defective images; no AUROC")


if __name__ == "__main__":
    main()
