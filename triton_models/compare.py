"""Measured architecture comparison at an equal CPU training-time budget.

    python -m triton_models.compare TRAIN HELDOUT --seconds 120 --json comparison.json

Each architecture's step time (batch preparation included) is measured first; it then
trains for the number of steps that fits in `--seconds` (one-cycle schedule over exactly
those steps, so each run anneals fully), is exported to TorchScript, evaluated on the
held-out set, and timed in-process at batch 8 (256x256). Accuracy and speed together decide
which architecture ships.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from triton_models import metrics, mvtec
from triton_models.bench import images_per_second
from triton_models.export import export, gflops_per_image
from triton_models.net import ARCHITECTURES, InspectqSeg, build_backbone
from triton_models.train import loss_fn, make_batch, train


def step_seconds(data: mvtec.Dataset, arch: str, batch: int, crop: int) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = InspectqSeg(build_backbone(arch, len(data.classes))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for _ in range(8):
        start = time.perf_counter()
        images, masks, labels = make_batch(data, rng.integers(0, len(data.labels), batch),
                                           crop, rng)
        loss = loss_fn(model, images, masks, labels, len(data.classes))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("heldout", type=Path)
    parser.add_argument("--classes", default="scratch,pit,crack,stain")
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    classes = args.classes.split(",")
    data = mvtec.load(args.data, classes)
    held = mvtec.load(args.heldout, classes)
    results = []
    for arch in args.archs.split(","):
        steps = max(int(args.seconds / step_seconds(data, arch, args.batch, args.crop)), 10)
        model, info = train(data, arch, steps, args.batch, args.crop, args.lr, seed=0,
                            max_seconds=args.seconds * 1.5)
        scripted = torch.jit.load(str(export(model, Path(f"/tmp/inspectq-compare-{arch}.pt"))))
        result = metrics.evaluate(scripted, held)
        row = {
            "arch": arch,
            "params": sum(p.numel() for p in model.parameters()),
            "gflops_per_image": gflops_per_image(model),
            "train_steps": info["steps"],
            "train_seconds": info["seconds"],
            "mean_dice": result["mean_dice"],
            "per_class_dice": {k: v["dice"] for k, v in result["per_class"].items()},
            "image_auroc": result["image_auroc"],
            "inference_img_s_b8": round(images_per_second(scripted, batch=8, runs=10), 1),
        }
        print(json.dumps(row))
        results.append(row)
    section = {
        "protocol": (f"Each architecture trained from scratch for a {args.seconds:.0f} s CPU "
                     f"budget ({args.threads} threads, batch {args.batch}, {args.crop} px "
                     f"crops, lr {args.lr}), then evaluated on {len(held.labels)} held-out "
                     f"images ({args.heldout}); img/s is in-process TorchScript at batch 8."),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(section, indent=2) + "\n")
    print(json.dumps(section, indent=2))


if __name__ == "__main__":
    main()
