"""``inspectq dataset export``: the images operators confirmed or corrected, as a training
set in the MVTec AD layout the trainer reads (``triton_models.mvtec``), so the retraining
loop closes::

    OUT/train/good/<job>.<ext>                 the decision is PASS
    OUT/test/<class>/<job>.<ext>               REJECT, by defect class
    OUT/ground_truth/<class>/<job>_mask.png    where the defect is known (see below)
    OUT/manifest.jsonl                         one line per image: job, label, source

The label is the operator's: a confirmed job keeps the model's decision; a corrected one
takes the operator's decision (REJECT when they only drew defects). REVIEW answers are not
labels and are left out. A defect's class and place come from the operator's boxes when
they drew any, else from the model's regions and its stored mask (a confirmed REJECT).
The trainer wants a mask for every defective image or for none, so ``ground_truth/`` is
written only when every exported defective image has one; the command says when not.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Literal

import click

from inspectq.backends import Backends
from inspectq.index import JobFilter
from inspectq.jobs import JobRecord
from inspectq.result import Decision
from inspectq_cli.ops import outages_as_errors
from inspectq_cli.settings import load_settings

UNKNOWN_CLASS = "defect"
_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp",
           "image/tiff": ".tif"}


@click.group()
def dataset() -> None:
    """Training data from the inspection record."""


@dataset.command("export")
@click.option("--tenant", default="default", show_default=True)
@click.option("--since", type=click.DateTime(), default=None,
              help="Jobs created since (UTC); default: all.")
@click.option("--line", default=None, help="Only this line.")
@click.option("--verdict", type=click.Choice(["correct", "all"]), default="all",
              show_default=True,
              help="correct: only the corrected jobs; all: confirmed and corrected.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="The folder to write (created; must be empty).")
def export(tenant: str, since: datetime | None, line: str | None,
           verdict: Literal["correct", "all"], out: Path) -> None:
    """Write the reviewed images in the MVTec AD layout (see `inspectq dataset --help`).

    \b
    Example:
      inspectq dataset export --since 2026-11-01 --verdict all --out var/dataset
      .venv-model/bin/python -m triton_models.train var/dataset --out var/runs/mine/1
    """
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} is not empty")
    backends = Backends.connect(load_settings())
    filters = JobFilter(feedback="correct" if verdict == "correct" else "any", since=since,
                        line=line)
    written: list[tuple[Path, str | None, bytes | None]] = []  # image, class, mask
    manifest: list[dict[str, object]] = []
    with outages_as_errors():
        rows = list(backends.index.iter_rows(tenant, filters))
        with click.progressbar(rows, label="exporting", show_pos=True) as bar:
            for row in bar:
                record = backends.jobs.get(row["id"])
                if record is None or record.result is None or not record.feedback:
                    continue
                entry = _export_one(backends, record, out)
                if entry is not None:
                    written.append(entry[0])
                    manifest.append(entry[1])
    defective = [(path, cls, mask) for path, cls, mask in written if cls is not None]
    with_masks = bool(defective) and all(mask is not None for _, _, mask in defective)
    if with_masks:
        for path, cls, mask in defective:
            target = out / "ground_truth" / str(cls) / f"{path.stem}_mask.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(mask or b"")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    counts = Counter(str(m["label"]) for m in manifest)
    click.echo(json.dumps({"images": len(manifest), "labels": dict(sorted(counts.items())),
                           "masks": with_masks, "out": str(out)}))
    if defective and not with_masks:
        click.echo("no ground_truth/: some defective images have no known defect place "
                   "(corrected to REJECT without boxes); the trainer uses image labels",
                   err=True)


def _export_one(backends: Backends, record: JobRecord, out: Path
                ) -> tuple[tuple[Path, str | None, bytes | None], dict[str, object]] | None:
    assert record.result is not None
    latest = record.feedback[-1]
    decision = latest.effective_decision(record.result.decision)
    if decision is Decision.REVIEW:
        return None
    data = backends.store.get(record.image.key)
    if data is None:
        return None
    suffix = _SUFFIX.get(record.image.content_type, ".png")
    if decision is Decision.PASS:
        cls, mask, source = None, None, "none"
        path = out / "train" / "good" / f"{record.id}{suffix}"
    else:
        cls, mask, source = _defect(backends, record)
        path = out / "test" / cls / f"{record.id}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return (path, cls, mask), {"job": record.id, "label": cls or "good",
                               "verdict": latest.verdict, "mask": source,
                               "file": str(path.relative_to(out))}


def _defect(backends: Backends, record: JobRecord) -> tuple[str, bytes | None, str]:
    """(class, mask PNG or None, where the mask came from) of a defective image."""
    from PIL import Image, ImageDraw

    assert record.result is not None
    size = (record.result.width, record.result.height)
    boxes = record.feedback[-1].defects or []
    if boxes:
        cls = Counter(box.class_name for box in boxes).most_common(1)[0][0]
        canvas = Image.new("L", size, 0)
        draw = ImageDraw.Draw(canvas)
        for box in boxes:
            if box.class_name == cls:
                x0, y0, x1, y1 = box.bbox
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
        return cls, _png(canvas), "operator boxes"
    regions = record.result.defects
    if not regions or record.feedback[-1].verdict == "correct":
        return (regions[0].class_name if regions else UNKNOWN_CLASS), None, "none"
    cls = regions[0].class_name
    stored = backends.store.get(record.mask) if record.mask else None
    if stored is None:
        return cls, None, "none"
    index = record.result.model.classes.index(cls)
    model_mask = Image.open(io.BytesIO(stored)).convert("L")
    return cls, _png(model_mask.point(lambda value: 255 if value == index else 0)), "model"


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")  # type: ignore[attr-defined]
    return buffer.getvalue()

