"""Bring your own model: check a TorchScript file against the inspectq contract, install it as
the next version of both Triton repositories, choose or roll back the served version.

    inspectq model install MODEL.pt --classes scratch,pit,crack,stain [--select]
    inspectq model select N        # serve version N (also: roll back)
    inspectq model verify          # every version's file vs card and configs
    inspectq model list

`install` refuses, with a message naming the file and exit status 1, a file that is missing,
truncated, not TorchScript, not the `--sha256` given, or whose smoke inference (uint8
[2,3,256,256]) does not return the contract's outputs, dtypes, shapes and value ranges.
The contract is docs/model-contract.md.
"""

from __future__ import annotations

import datetime
import shutil
import warnings
from pathlib import Path
from typing import Any

from triton_models import card
from triton_models.repository import (
    MODEL_NAME,
    Repositories,
    config_parameters,
    sync,
)
from triton_models.verify import ModelFileError, check_file

SIZE = 256


class ContractError(Exception):
    """The model loads but does not fit the inspectq model contract."""


def smoke_test(path: Path, num_classes: int) -> dict[str, Any]:
    """Run the contract's smoke inference on a TorchScript file; ContractError if it does not
    fit. Also checks that an image's result does not depend on its batch neighbours."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError or ValueError variants
        raise ContractError(f"{path}: does not load as TorchScript: "
                            f"{str(error).splitlines()[0]}") from error
    model.eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    try:
        with torch.inference_mode():
            outputs = model(images)
            single = model(images[:1])
    except Exception as error:
        raise ContractError(f"{path}: smoke inference on uint8 [2,3,{SIZE},{SIZE}] failed: "
                            f"{str(error).splitlines()[0]}") from error
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
        raise ContractError(f"{path}: forward must return 3 tensors (class_map, defect_prob, "
                            f"image_score), got {type(outputs).__name__}")
    expected = [("class_map", torch.uint8, (2, SIZE, SIZE)),
                ("defect_prob", torch.float16, (2, SIZE, SIZE)),
                ("image_score", torch.float32, (2, 1))]
    for tensor, (name, dtype, shape) in zip(outputs, expected, strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ContractError(f"{path}: output {name} is not a tensor")
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ContractError(f"{path}: output {name} is {tensor.dtype} "
                                f"{list(tensor.shape)}, the contract needs {dtype} {list(shape)}")
    class_map, defect_prob, score = outputs
    if int(class_map.max()) >= num_classes:
        raise ContractError(f"{path}: class_map holds {int(class_map.max())}, but there are "
                            f"only {num_classes} classes (pass --classes)")
    for name, tensor in (("defect_prob", defect_prob.float()), ("image_score", score)):
        if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
            raise ContractError(f"{path}: {name} must be finite and within 0..1, got "
                                f"{float(tensor.min())}..{float(tensor.max())}")
    drift = float((single[2][0] - score[0]).abs().max())
    if drift > 1e-3:
        raise ContractError(f"{path}: image 0 scores {float(single[2][0, 0]):.4f} alone but "
                            f"{float(score[0, 0]):.4f} in a batch of 2: batch items interact")
    return {"input": f"uint8 [2,3,{SIZE},{SIZE}]",
            "outputs": {n: f"{str(d).removeprefix('torch.')} {list(s)}" for n, d, s in expected},
            "image_score": [round(float(v), 4) for v in score[:, 0]],
            "batch_consistency_max_abs_diff": drift}


def install(repos: Repositories, source: Path, classes: list[str] | None,
            expected_sha256: str | None, extra_card: dict[str, Any] | None,
            select: bool) -> int:
    """Check `source` and install it as the next version; returns that version."""
    sha = check_file(source, expected_sha256)
    served = repos.served_version()
    if classes is None:
        classes = card.read(repos.model_file(served).parent)["classes"]
    elif classes[0] != "background":
        classes = ["background", *classes]
    smoke = smoke_test(source, len(classes))
    version = max(repos.versions(), default=0) + 1
    target = repos.model_file(version)
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    check_file(target, sha)
    model_card: dict[str, Any] = {
        "name": MODEL_NAME,
        "file": target.name,
        "sha256": sha,
        "size_bytes": target.stat().st_size,
        "classes": classes,
        "input": card.INPUT_CONTRACT,
        "outputs": card.OUTPUT_CONTRACT,
        "source": str(source.resolve()),
        "installed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "smoke_test": smoke,
        **(extra_card or {}),
    }
    model_card["sha256"] = sha  # never let a supplied card override the measured digest
    card.write(target.parent, model_card)
    sync(repos, version if select else served)
    return version


def verify(repos: Repositories) -> list[str]:
    """Check every version's file against its card and both configs; returns OK lines."""
    configs = {repos.gpu_model / "config.pbtxt", repos.cpu_model / "config.pbtxt"}
    params = {path: config_parameters(path.read_text()) for path in configs}
    lines = []
    for version in repos.versions():
        path = repos.model_file(version)
        card_sha = card.read(path.parent)["sha256"]
        for config, values in params.items():
            if values.get(f"sha256_v{version}") != card_sha:
                raise ModelFileError(f"{path}: {config} has sha256_v{version}="
                                     f"{values.get(f'sha256_v{version}')}, card says {card_sha}")
        check_file(path, card_sha)
        if not (repos.cpu_model / str(version) / "model.py").exists():
            raise ModelFileError(f"{repos.cpu_model / str(version) / 'model.py'}: missing")
        lines.append(f"version {version}: {path} sha256 {card_sha} OK")
    return lines


def select(repos: Repositories, version: int) -> None:
    """Serve ``version`` (after checking its file against its card): choose or roll back."""
    check_file(repos.model_file(version), card.read(repos.model_file(version).parent)["sha256"])
    sync(repos, version)
