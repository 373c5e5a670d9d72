"""Held-out evaluation of a contract model (eager or TorchScript) on an MVTec-layout set.

Pixel metrics are pooled over the whole set: for each defect class, Dice = 2TP/(2TP+FP+FN)
and IoU = TP/(TP+FP+FN) over all pixels of all images, from the arg-max class map. Image
metrics use `image_score`: AUROC (rank statistic, ties counted half), recall of defective
images above the REJECT threshold, and the share of clean images at or above the PASS
threshold (false alarms: anything not PASS needs a person).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from triton_models import mvtec

PASS_BELOW = 0.40
REJECT_ABOVE = 0.65


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    merged = np.concatenate([pos, neg])
    for value in np.unique(merged):  # average ranks over ties
        tied = merged == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, batch: int = 16,
            desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Class maps (N,H,W) uint8 and image scores (N,) of uint8 images (N,3,H,W)."""
    maps, scores = [], []
    for start in tqdm(range(0, len(images), batch), desc=desc, unit="batch"):
        class_map, _, score = model(torch.from_numpy(images[start : start + batch]))[:3]
        maps.append(class_map.numpy())
        scores.append(score[:, 0].float().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def evaluate(model: torch.nn.Module, data: mvtec.Dataset) -> dict[str, object]:
    class_maps, scores = predict(model, data.images)
    defective = data.labels > 0
    result: dict[str, object] = {
        "images": len(scores),
        "defective_images": int(defective.sum()),
        "good_images": int((~defective).sum()),
        "image_auroc": round(auroc(scores, defective), 4),
        f"recall_defective_at_reject_{REJECT_ABOVE}": round(
            float((scores[defective] > REJECT_ABOVE).mean()), 4),
        f"false_alarm_good_at_pass_{PASS_BELOW}": round(
            float((scores[~defective] >= PASS_BELOW).mean()), 4),
        "score_quantiles": {
            "good_p50_p99_max": [round(float(q), 4)
                                 for q in np.quantile(scores[~defective], [0.5, 0.99, 1.0])],
            "defective_min_p01_p50": [round(float(q), 4)
                                      for q in np.quantile(scores[defective], [0.0, 0.01, 0.5])],
        },
    }
    if data.masks is not None:
        per_class = {}
        for k, name in enumerate(data.classes[1:], start=1):
            pred, true = class_maps == k, data.masks == k
            tp = int((pred & true).sum())
            fp = int((pred & ~true).sum())
            fn = int((~pred & true).sum())
            per_class[name] = {
                "dice": round(2 * tp / max(2 * tp + fp + fn, 1), 4),
                "iou": round(tp / max(tp + fp + fn, 1), 4),
                "pixels": tp + fn,
            }
        result["per_class"] = per_class
        result["mean_dice"] = round(float(np.mean([c["dice"] for c in per_class.values()])), 4)
        result["mean_iou"] = round(float(np.mean([c["iou"] for c in per_class.values()])), 4)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a TorchScript contract model.")
    parser.add_argument("model", type=Path, help="TorchScript file")
    parser.add_argument("data", type=Path, help="MVTec-layout folder")
    parser.add_argument("--classes", default=None,
                        help="comma-separated defect classes in model order (default: folders)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    classes = args.classes.split(",") if args.classes else None
    data = mvtec.load(args.data, classes)
    model = torch.jit.load(str(args.model), map_location="cpu")
    print(json.dumps(evaluate(model, data), indent=2))


if __name__ == "__main__":
    main()
