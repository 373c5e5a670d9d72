"""TorchScript export of an `InspectqSeg` model.

The model is scripted (not traced, so no shape is baked in) and frozen: BatchNorm folds into
the convolutions and the weights become constants, which is what both Triton backends load.
The graph takes uint8 (N,3,H,W) and returns (class_map, defect_prob, image_score) in the
order of the config's `output` list, which is how Triton's PyTorch backend maps outputs
whose names do not follow the `<name>__<index>` convention.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from triton_models.net import InspectqSeg


def export(model: InspectqSeg, path: Path) -> Path:
    model = model.eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        frozen = torch.jit.freeze(torch.jit.script(model))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(frozen, str(path))
    return path


def gflops_per_image(model: torch.nn.Module, size: int = 256) -> float:
    """Forward FLOPs for one uint8 image of size x size (multiply-adds count as two)."""
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(image)
    return round(counter.get_total_flops() / 1e9, 3)
