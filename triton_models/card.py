"""Model cards: `model_card.json` for machines and `model_card.md` for people, beside the
TorchScript file they describe.

    python -m triton_models.card attach CARD_DIR KEY RESULT.json   # add a section, re-render
    python -m triton_models.card render CARD_DIR                   # re-render the .md only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from triton_models.verify import sha256_of

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"

INPUT_CONTRACT = {
    "name": "images",
    "dtype": "UINT8",
    "shape": ["N", 3, 256, 256],
    "layout": "RGB, channel-first, 0..255, not normalized (the model normalizes inside)",
}
OUTPUT_CONTRACT = [
    {"name": "class_map", "dtype": "UINT8", "shape": ["N", 256, 256],
     "meaning": "arg-max class per pixel, index into classes (0 = background)"},
    {"name": "defect_prob", "dtype": "FP16", "shape": ["N", 256, 256],
     "meaning": "1 - P(background) per pixel, 0..1"},
    {"name": "image_score", "dtype": "FP32", "shape": ["N", 1],
     "meaning": "probability that the tile holds a defect, 0..1"},
]
#: The optional fourth output (docs/model-contract.md); every model the trainer makes has it.
OOD_OUTPUT = {"name": "ood_score", "dtype": "FP32", "shape": ["N", 1],
              "meaning": "out-of-domain score of the tile: 1.0 is the threshold, > 1.0 is out "
                         "of domain (unlike the training images)"}


def file_facts(model_file: Path) -> dict[str, Any]:
    """The card's description of the TorchScript file itself: name, sha256 and size."""
    return {"file": model_file.name, "sha256": sha256_of(model_file),
            "size_bytes": model_file.stat().st_size}


def read(card_dir: Path) -> dict[str, Any]:
    return json.loads((Path(card_dir) / CARD_JSON).read_text())


def write(card_dir: Path, card: dict[str, Any]) -> None:
    card_dir = Path(card_dir)
    (card_dir / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (card_dir / CARD_MD).write_text(render_markdown(card))


def _table(rows: list[list[object]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _metrics_md(metrics: dict[str, Any]) -> list[str]:
    out = []
    if "per_class" in metrics:
        rows = [[name, m["dice"], m["iou"], m["pixels"]]
                for name, m in metrics["per_class"].items()]
        out += [_table(rows, ["class", "pixel Dice", "pixel IoU", "true pixels"]), ""]
        out.append(f"- mean Dice over defect classes: **{metrics['mean_dice']}**"
                   f" (mean IoU {metrics['mean_iou']})")
    out.append(f"- image AUROC: **{metrics['image_auroc']}** on {metrics['images']} images"
               f" ({metrics['defective_images']} defective, {metrics['good_images']} good)")
    for key, value in metrics.items():
        if key.startswith(("recall_", "false_alarm_")):
            out.append(f"- {key.replace('_', ' ')}: **{value}**")
    if "score_quantiles" in metrics:
        out.append(f"- image score quantiles: `{json.dumps(metrics['score_quantiles'])}`")
    return out


def render_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Model card: {card['name']} ({card.get('architecture', 'user model')})", ""]
    lines += [f"- file: `{card['file']}` ({card.get('size_bytes', '?')} bytes)",
              f"- sha256: `{card['sha256']}`",
              f"- classes (index = `class_map` value): `{','.join(card['classes'])}`"]
    if "params" in card:
        lines.append(f"- parameters: {card['params']:,}; {card['gflops_per_image']} GFLOPs per"
                     " 256x256 image")
    lines += ["", "## Input and outputs", "",
              f"Input `{card['input']['name']}`: {card['input']['dtype']} "
              f"{card['input']['shape']}, {card['input']['layout']}.", ""]
    outputs = [[o["name"], o["dtype"], o["shape"], o["meaning"]] for o in card["outputs"]]
    lines.append(_table(outputs, ["output", "dtype", "shape", "meaning"]))
    if "training" in card:
        t = card["training"]
        lines += ["", "## Training", "", f"    {t['command']}", ""]
        lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in t.items() if k != "command"]
    if "data" in card:
        lines += ["", "## Data", ""]
        lines += [f"- {k}: `{json.dumps(v)}`" for k, v in card["data"].items()]
    if "image_auroc" in card.get("metrics", {}):
        lines += ["", "## Held-out metrics", "", *_metrics_md(card["metrics"])]
    if card.get("service_path_metrics"):
        lines += ["", "## Decisions through the service's path", "",
                  "Each held-out file decoded, tiled (native-scale 256 px tiles, or one resized"
                  " tile when it is no larger) and scored as the workers do; image score = max"
                  " over tiles; a frame with quality issues never PASSes"
                  " (`inspectq model evaluate`).", ""]
        rows = [[name.replace("_", " "), f["thresholds"]["pass_below"],
                 f["thresholds"]["reject_above"], f["image_auroc"],
                 f["recall_defective_at_reject"], f["false_alarm_good_not_pass"],
                 f["missed_defective_pass"], f["share_to_review"],
                 f.get("out_of_domain_share", "-")]
                for name, f in card["service_path_metrics"].items()]
        lines.append(_table(rows, ["thresholds", "PASS below", "REJECT above", "AUROC",
                                   "defective REJECTed", "good not PASSed (false alarms)",
                                   "defective PASSed (misses)", "to REVIEW",
                                   "out of domain"]))
    for key in ("calibration", "out_of_domain", "post_training"):
        if key in card:
            lines += ["", f"## {key.replace('_', ' ').capitalize()}", ""]
            lines += [f"- {k.replace('_', ' ')}: {json.dumps(v) if isinstance(v, dict) else v}"
                      for k, v in card[key].items()]
    if "label_only" in card:
        # The card of a model trained on the same data with the masks hidden (--label-only).
        lo = card["label_only"]
        lines += ["", "## Image-label-only mode (no ground_truth/)", "",
                  f"    {lo['training']['command']}", "", *_metrics_md(lo["metrics"]),
                  f"- training time: {lo['training']['training_seconds']} s",
                  f"- its sha256 (not shipped): `{lo['sha256']}`"]
    if "architecture_comparison" in card:
        comp = card["architecture_comparison"]
        lines += ["", "## Architecture comparison", "", comp.get("protocol", ""), ""]
        rows = [[r["arch"], f"{r['params']:,}", r["gflops_per_image"], r["train_steps"],
                 r["mean_dice"], r["per_class_dice"], r["image_auroc"], r["inference_img_s_b8"]]
                for r in comp["results"]]
        lines.append(_table(rows, ["arch", "params", "GFLOPs/img", "steps in budget",
                                   "mean Dice", "per-class Dice", "AUROC", "img/s b8"]))
        if "conclusion" in comp:
            lines += ["", comp["conclusion"]]
    if "smoke_test" in card:
        lines += ["", "## Contract smoke test", "", f"`{json.dumps(card['smoke_test'])}`"]
    if "notes" in card:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Edit or re-render a model card.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    attach = sub.add_parser("attach", help="add a JSON section to a card and re-render it")
    attach.add_argument("card_dir", type=Path)
    attach.add_argument("key", help="section name, e.g. label_only or architecture_comparison")
    attach.add_argument("section", type=Path, help="JSON file holding the section")
    render = sub.add_parser("render", help="re-render model_card.md from model_card.json")
    render.add_argument("card_dir", type=Path)
    args = parser.parse_args(argv)
    card = read(args.card_dir)
    if args.cmd == "attach":
        card[args.key] = json.loads(args.section.read_text())
    write(args.card_dir, card)
    print(f"wrote {args.card_dir / CARD_MD}")


if __name__ == "__main__":
    main()
