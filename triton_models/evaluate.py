"""Score images exactly as the service does, and measure the decisions.

    inspectq model evaluate MODEL.pt DATA [--pass-threshold 0.40 --reject-threshold 0.65]
    python -m triton_models.evaluate MODEL.pt DATA          # the same

The one policy for training, the card and the service (``inspectq/imaging.py``): a file is
decoded as the workers decode it (upright, 16-bit by its real bit depth, RGB); an image of at
most 256 x 256 is resized to one 256 px tile, a larger one is cut at its native scale into
256 px tiles ``tile_stride`` apart (128 by default, as the service); the image score is the
max over its tiles, the out-of-domain score (when the model has one) too. The decision is
the service's (``inspectq.result.final_decision``): the score against the thresholds, a
frame with image-quality issues never PASSes (``inspectq/quality.py``), and an image out of
domain (ood_score > 1) goes to REVIEW whatever its score.

DATA is a folder in the MVTec AD layout (``train/good``, ``test/good``, ``test/<class>``:
every image is scored, as the trainer's held-out metrics do), a folder with a ``good``
subfolder and one subfolder per defect class (or just ``defective``), or a text file with
one ``PATH LABEL`` per line (LABEL ``good`` or a defect class; relative paths are relative
to the list; ``#`` starts a comment).

Printed: image AUROC, the recall of defective images at REJECT, the false alarms (good
images not PASSed), the defective images PASSed (misses), the share sent to REVIEW, and the
share flagged out of domain (ood_score > 1).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectq.config import Settings
from inspectq.imaging import (
    ModelInput,
    UndecodableImage,
    decode_image,
    image_score,
    make_model_input,
)
from inspectq.quality import check_quality
from inspectq.result import (
    Decision,
    ImageQuality,
    QualityIssue,
    Thresholds,
    final_decision,
    is_out_of_domain,
)
from triton_models.metrics import auroc

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
#: The service's tiling and thresholds: the settings' defaults (INSPECTQ_TILE_SIZE, ...).
TILE_SIZE: int = Settings.model_fields["tile_size"].default
TILE_STRIDE: int = Settings.model_fields["tile_stride"].default
PASS_BELOW: float = Settings.model_fields["pass_threshold"].default
REJECT_ABOVE: float = Settings.model_fields["reject_threshold"].default


@dataclass(frozen=True)
class Sample:
    """One image file and its label: ``good`` or the name of its defect class."""

    path: Path
    label: str

    @property
    def defective(self) -> bool:
        return self.label != GOOD


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def samples(data: Path) -> list[Sample]:
    """The labelled images of DATA (see the module docstring for the three forms)."""
    data = Path(data)
    found: list[Sample] = []
    if data.is_file():
        for number, line in enumerate(data.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{data}:{number}: expected 'PATH LABEL', got {line!r}")
            path = Path(parts[0])
            found.append(Sample(path if path.is_absolute() else data.parent / path, parts[1]))
    elif (data / "test").is_dir():
        found += [Sample(p, GOOD) for p in _images_in(data / "train" / GOOD)]
        for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
            found += [Sample(p, folder.name) for p in _images_in(folder)]
    elif data.is_dir():
        for folder in sorted(p for p in data.iterdir() if p.is_dir()):
            found += [Sample(p, folder.name) for p in _images_in(folder)]
    else:
        raise FileNotFoundError(f"{data}: no such folder or file list")
    if not found:
        raise FileNotFoundError(f"{data}: no images found")
    return found


@dataclass(frozen=True)
class ServiceImage:
    """What the workers make of one file: its tiles and its quality issues."""

    tiles: np.ndarray  # (T, 3, tile, tile) uint8
    quality_issues: list[str]


def service_input(image: np.ndarray) -> ModelInput:
    """The service's tiles (and their layout) of a (3,H,W) uint8 image held at the service's
    scale (`mvtec.load(size=None)`, `mvtec.read_rgb(path, None)`)."""
    return make_model_input(np.ascontiguousarray(image.transpose(1, 2, 0)), TILE_SIZE,
                            TILE_STRIDE)


def service_image(path: Path, tile: int = TILE_SIZE, stride: int = TILE_STRIDE) -> ServiceImage:
    try:
        image = decode_image(Path(path).read_bytes())
    except UndecodableImage as error:  # the service fails such a job: name the file
        raise ValueError(f"{path}: {error}") from error
    issues = [str(issue) for issue in check_quality(image).issues]
    return ServiceImage(make_model_input(image, tile, stride).tiles, issues)


def tile_batches(items: list[Sample], tile: int = TILE_SIZE, stride: int = TILE_STRIDE,
                 batch: int = 16) -> Iterator[tuple[np.ndarray, list[int], list[ServiceImage]]]:
    """Batches of about `batch` tiles: (tiles, index of each tile's sample, the samples'
    ServiceImage in order of first appearance). An image's tiles are never split."""
    pending: list[tuple[int, ServiceImage]] = []
    for index, sample in enumerate(items):
        pending.append((index, service_image(sample.path, tile, stride)))
        if sum(len(s.tiles) for _, s in pending) >= batch or index == len(items) - 1:
            tiles = np.concatenate([s.tiles for _, s in pending])
            owners = [i for i, s in pending for _ in range(len(s.tiles))]
            yield tiles, owners, [s for _, s in pending]
            pending = []


@dataclass
class ImageResult:
    sample: Sample
    score: float
    ood_score: float | None
    quality_issues: list[str]


def score_images(model: Callable[[torch.Tensor], Any], items: list[Sample],
                 tile: int = TILE_SIZE, stride: int = TILE_STRIDE) -> list[ImageResult]:
    """Every sample scored through the service's path with a contract model (eager or
    TorchScript): the max tile image_score, and the max tile ood_score if there is one."""
    results: list[ImageResult] = []
    with torch.inference_mode():
        for tiles, owners, images in tile_batches(items, tile, stride):
            outputs = model(torch.from_numpy(tiles))
            scores = outputs[2][:, 0].float().numpy()
            ood = outputs[3][:, 0].float().numpy() if len(outputs) > 3 else None
            owner = np.array(owners)
            for k, index in enumerate(dict.fromkeys(owners)):
                mine = owner == index
                results.append(ImageResult(
                    items[index], image_score(scores[mine]),
                    None if ood is None else float(ood[mine].max()),
                    images[k].quality_issues))
    return results


def decision(result: ImageResult, thresholds: Thresholds) -> Decision:
    """The service's decision for the image (``inspectq.result.final_decision``)."""
    quality = ImageQuality(issues=[QualityIssue(i) for i in result.quality_issues])
    return final_decision(result.score, thresholds, quality, result.ood_score)


def summarize(results: list[ImageResult], pass_below: float = PASS_BELOW,
              reject_above: float = REJECT_ABOVE) -> dict[str, Any]:
    """Image AUROC and the decisions' rates at the thresholds."""
    thresholds = Thresholds(pass_threshold=pass_below, reject_threshold=reject_above)
    scores = np.array([r.score for r in results])
    defective = np.array([r.sample.defective for r in results])
    decisions = np.array([decision(r, thresholds) for r in results])

    def share(mask: np.ndarray, of: np.ndarray) -> float | None:
        return round(float(mask[of].mean()), 4) if of.any() else None

    summary: dict[str, Any] = {
        "images": len(results),
        "defective_images": int(defective.sum()),
        "good_images": int((~defective).sum()),
        "thresholds": {"pass_below": pass_below, "reject_above": reject_above},
        "image_auroc": round(auroc(scores, defective), 4),
        "recall_defective_at_reject": share(decisions == Decision.REJECT, defective),
        "false_alarm_good_not_pass": share(decisions != Decision.PASS, ~defective),
        "missed_defective_pass": share(decisions == Decision.PASS, defective),
        "share_to_review": share(decisions == Decision.REVIEW, np.ones_like(defective)),
        "quality_flagged": sum(1 for r in results if r.quality_issues),
    }
    ood = [r.ood_score for r in results if r.ood_score is not None]
    if ood:
        flagged = np.array([is_out_of_domain(r.ood_score) for r in results])
        summary["out_of_domain_share"] = share(flagged, np.ones_like(defective))
        summary["ood_score_p50_p99_max"] = [round(float(q), 3)
                                           for q in np.quantile(ood, [0.5, 0.99, 1.0])]
    if math.isnan(summary["image_auroc"]):
        summary["image_auroc"] = None
    return summary


def card_figures(model: Callable[[torch.Tensor], Any], items: list[Sample],
                 recommended: dict[str, float] | None = None) -> dict[str, Any]:
    """The card's decision figures: at the default thresholds and, if given, at the
    recommended ones (``triton_models.calibrate.recommend_thresholds``)."""
    scored = score_images(model, items)
    figures = {"at_default_thresholds": summarize(scored)}
    if recommended:
        figures["at_recommended_thresholds"] = summarize(
            scored, recommended["pass_below"], recommended["reject_above"])
    return figures


def evaluate(model_file: Path, data: Path, pass_below: float = PASS_BELOW,
             reject_above: float = REJECT_ABOVE, tile: int = TILE_SIZE,
             stride: int = TILE_STRIDE) -> dict[str, Any]:
    model = torch.jit.load(str(model_file), map_location="cpu").eval()
    results = score_images(model, samples(data), tile, stride)
    return {"model": str(model_file), "data": str(data), "tile_size": tile,
            "tile_stride": stride, **summarize(results, pass_below, reject_above)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="TorchScript file")
    parser.add_argument("data", type=Path, help="folder (MVTec or good/<class>) or file list")
    parser.add_argument("--pass-threshold", type=float, default=PASS_BELOW)
    parser.add_argument("--reject-threshold", type=float, default=REJECT_ABOVE)
    parser.add_argument("--tile-size", type=int, default=TILE_SIZE)
    parser.add_argument("--tile-stride", type=int, default=TILE_STRIDE)
    args = parser.parse_args(argv)
    print(json.dumps(evaluate(args.model, args.data, args.pass_threshold,
                              args.reject_threshold, args.tile_size, args.tile_stride),
                     indent=2))


if __name__ == "__main__":
    main()
