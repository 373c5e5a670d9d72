"""Real, image-labelled defect images from the package index: the ELPV solar cell set.

    python -m triton_models.realdata fetch var/elpv [--seed 0] [--heldout-fraction 0.25]
    python -m triton_models.realdata fetch var/elpv --wheel elpv_dataset-1.0.0.post1-*.whl

ELPV (the `elpv-dataset` package on PyPI; images CC BY-NC-SA 4.0, Deitsch et al., ZAE Bayern):
2,624 electroluminescence images (300x300, 8-bit grayscale) of mono- and polycrystalline
solar cells cut from 44 modules, each rated by experts with a defect probability of 0, 1/3,
2/3 or 1 (cracks, inactive regions, finger interruptions). There are no masks: image labels
only, which is what a factory usually has. A cell is "defective" at probability >= 0.5 (2/3
and 1: 821 cells) and "good" below (0 and 1/3: 1,803 cells), as in the dataset's own binary
benchmark.

`fetch` is the only step that touches the network, and only when the user runs it: it calls
`pip download` for the pinned wheel (91 MB) and copies its PNGs, stratified by label and
cell type with `--seed`, into two MVTec-layout folders:

    DIR/train/train/good/*.png      DIR/train/test/defective/*.png
    DIR/heldout/test/good/*.png     DIR/heldout/test/defective/*.png

each with a `dataset.json` (source, license, rule, counts) that the model cards quote.
File names keep the cell type: `mono_cell0001.png`, `poly_cell0123.png`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "elpv-dataset==1.0.0.post1"
DEFECTIVE_AT = 0.5
CLASS = "defective"
SOURCE = {
    "name": "ELPV: electroluminescence images of solar cells",
    "package": PACKAGE,
    "license": "CC BY-NC-SA 4.0 (images), Apache-2.0 (code)",
    "citation": "Deitsch et al., Automatic classification of defective photovoltaic module "
                "cells in electroluminescence images, Solar Energy 185, 2019",
    "rule": f"defective when the annotated defect probability >= {DEFECTIVE_AT}",
}


def download_wheel(dest: Path) -> Path:
    """`pip download` the pinned wheel into dest; returns its path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                    ":all:", "--disable-pip-version-check", "-q", "-d", str(dest), PACKAGE],
                   check=True)
    return next(dest.glob("elpv_dataset-*.whl"))


def read_labels(wheel: zipfile.ZipFile) -> list[tuple[str, float, str]]:
    """(member path, defect probability, cell type) for every image of the wheel."""
    rows = []
    for line in wheel.read("elpv_dataset/data/labels.csv").decode().splitlines():
        if line.strip():
            path, prob, kind = line.split()
            rows.append((f"elpv_dataset/data/{path}", float(prob), kind))
    return rows


def split(rows: list[tuple[str, float, str]], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out rows, stratified by (defective, cell type)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(rows), bool)
    strata = sorted({(prob >= DEFECTIVE_AT, kind) for _, prob, kind in rows})
    for stratum in strata:
        idx = [i for i, (_, prob, kind) in enumerate(rows)
               if (prob >= DEFECTIVE_AT, kind) == stratum]
        chosen = rng.permutation(idx)[: round(len(idx) * fraction)]
        held[chosen] = True
    return held


def write_layout(wheel_path: Path, out: Path, fraction: float, seed: int) -> dict[str, object]:
    """Sort the wheel's images into out/train and out/heldout; returns the summary."""
    summary: dict[str, object] = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        rows = read_labels(wheel)
        held = split(rows, fraction, seed)
        for part in ("train", "heldout"):
            counts: dict[str, int] = {}
            for (member, prob, kind), is_held in zip(rows, held, strict=True):
                if is_held != (part == "heldout"):
                    continue
                defective = prob >= DEFECTIVE_AT
                folder = (f"test/{CLASS}" if defective
                          else "test/good" if part == "heldout" else "train/good")
                target = out / part / folder / f"{kind}_{Path(member).name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(member))
                key = f"{kind} {'defective' if defective else 'good'}"
                counts[key] = counts.get(key, 0) + 1
            (out / part / "test" / CLASS).mkdir(parents=True, exist_ok=True)
            info = {**SOURCE, "part": part, "seed": seed, "heldout_fraction": fraction,
                    "counts": dict(sorted(counts.items()))}
            (out / part / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
            summary[part] = info["counts"]
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download ELPV and write the MVTec-layout folders")
    fetch.add_argument("out", type=Path)
    fetch.add_argument("--seed", type=int, default=0)
    fetch.add_argument("--heldout-fraction", type=float, default=0.25)
    fetch.add_argument("--wheel", type=Path, default=None,
                       help="an already downloaded elpv_dataset wheel (skips pip download)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        summary = write_layout(wheel, args.out, args.heldout_fraction, args.seed)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
