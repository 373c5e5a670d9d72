"""Bring your own model: check a TorchScript file against the inspectq contract, install it as
the next version of both Triton repositories, choose or roll back the served version.

    inspectq model install MODEL.pt --classes scratch,pit,crack,stain [--select]
    inspectq model select N        # serve version N (also: roll back)
    inspectq model verify          # every version's file vs card and configs
    inspectq model list

`install` refuses, with a message naming the file and exit status 1, a file that is missing,
truncated, not TorchScript, not the `--sha256` given, whose forward does not take exactly one
input named `images`, whose smoke inferences (uint8 [N,3,256,256] probe images, alone and in
batches of 2 to 16) do not return the contract's outputs (the three required ones, or those
and the optional `ood_score`), dtypes, shapes and value ranges, or in which an image's outputs
change with the other images of its batch.
The contract is docs/model-contract.md.
"""

from __future__ import annotations

import datetime
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triton_models import card
from triton_models.repository import (
    MODEL_NAME,
    Repositories,
    config_parameters,
    sync,
)
from triton_models.verify import ModelFileError, check_file

if TYPE_CHECKING:
    from torch import Tensor

SIZE = 256
OUTPUTS = (("class_map", "uint8", (SIZE, SIZE)),
           ("defect_prob", "float16", (SIZE, SIZE)),
           ("image_score", "float32", (1,)))
#: The optional fourth output: out-of-domain score, >= 0, above 1.0 = out of domain.
OOD_OUTPUT = ("ood_score", "float32", (1,))
# How far defect_prob and image_score may move between an image alone and in a batch: batched
# kernels may round differently, and one float16 step of defect_prob near 1 is 4.9e-4.
BATCH_TOLERANCE = 1e-3
LARGEST_BATCH = 16  # the contract's smallest max_batch_size


class ContractError(Exception):
    """The model loads but does not fit the inspectq model contract."""


def _probe_images() -> dict[str, Tensor]:
    """Smoke-test images, uint8 (3, SIZE, SIZE), that differ in every statistic a model could
    pool over its batch (brightness, contrast, texture, defects): a clean constant surface, hard
    stripes, noise, and a surface with a dark scratch and a bright spot (the shipped model
    scores the first 0.004, the others about 1). Two alike images, such as two noise images,
    would hide such pooling."""
    import torch

    axis = torch.arange(SIZE)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    grey = torch.full((3, SIZE, SIZE), 128, dtype=torch.uint8)
    stripes = ((cols // 8) % 2 * 255).to(torch.uint8).expand(3, SIZE, SIZE).contiguous()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    marked = torch.full((3, SIZE, SIZE), 150, dtype=torch.uint8)
    marked[:, 120:123, 40:200] = 40
    marked[:, (rows - 190) ** 2 + (cols - 128) ** 2 < 20 ** 2] = 240
    return {"grey": grey, "stripes": stripes, "noise": noise, "scratch_and_spot": marked}


def _check_input_name(path: Path, model: Any) -> None:
    """Triton's PyTorch backend binds the config's input `images` to the forward argument of
    that name and refuses a model whose forward takes more or fewer inputs than the config."""
    expected = card.INPUT_CONTRACT["name"]
    try:
        arguments = model.forward.schema.arguments[1:]  # [0] is the module itself (self)
    except AttributeError as error:
        raise ContractError(f"{path}: has no forward method; the contract needs "
                            f"forward({expected})") from error
    names = [argument.name for argument in arguments]
    if names != [expected]:
        raise ContractError(f"{path}: forward takes ({', '.join(names)}), the contract needs "
                            f"exactly one input named '{expected}' (Triton's PyTorch backend "
                            f"binds inputs by argument name)")


def _infer(path: Path, model: Any, images: Tensor, num_classes: int) -> tuple[Tensor, ...]:
    """Run one smoke inference and check its outputs against the contract."""
    import torch

    shape = f"uint8 {list(images.shape)}"
    try:
        with torch.inference_mode():
            outputs = model(images)
    except Exception as error:
        raise ContractError(f"{path}: smoke inference on {shape} failed: "
                            f"{str(error).splitlines()[0]}") from error
    if not isinstance(outputs, (tuple, list)) or len(outputs) not in (3, 4):
        raise ContractError(f"{path}: forward must return 3 tensors (class_map, defect_prob, "
                            f"image_score) or 4 (and ood_score), got "
                            f"{type(outputs).__name__}")
    for tensor, (name, dtype_name, item_shape) in zip(outputs, (*OUTPUTS, OOD_OUTPUT)[
            :len(outputs)], strict=True):
        dtype, expected_shape = getattr(torch, dtype_name), (len(images), *item_shape)
        if not isinstance(tensor, torch.Tensor):
            raise ContractError(f"{path}: output {name} is not a tensor")
        if tensor.dtype != dtype or tuple(tensor.shape) != expected_shape:
            raise ContractError(f"{path}: output {name} is {tensor.dtype} "
                                f"{list(tensor.shape)}, the contract needs {dtype} "
                                f"{list(expected_shape)} for input {shape}")
    class_map, defect_prob, score = outputs[:3]
    if int(class_map.max()) >= num_classes:
        raise ContractError(f"{path}: class_map holds {int(class_map.max())}, but there are "
                            f"only {num_classes} classes (pass --classes)")
    for name, tensor in (("defect_prob", defect_prob.float()), ("image_score", score)):
        if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
            raise ContractError(f"{path}: {name} must be finite and within 0..1, got "
                                f"{float(tensor.min())}..{float(tensor.max())}")
    if len(outputs) == 4 and (not torch.isfinite(outputs[3]).all() or outputs[3].min() < 0):
        raise ContractError(f"{path}: ood_score must be finite and >= 0, got "
                            f"{float(outputs[3].min())}..{float(outputs[3].max())}")
    return tuple(outputs)


def _batch_drift(path: Path, image: str, alone: tuple[Tensor, ...], batched: tuple[Tensor, ...],
                position: int, batch: list[str]) -> float:
    """How far the outputs of `image` alone move at `position` of `batch`; ContractError when
    class_map changes at all or defect_prob or image_score by more than BATCH_TOLERANCE."""
    where = f"between alone and position {position} of the batch [{', '.join(batch)}]"
    changed = int((alone[0][0] != batched[0][position]).sum())
    if changed:
        raise ContractError(f"{path}: class_map of the {image} probe image changes in {changed} "
                            f"pixels {where}: batch items interact")
    drift = 0.0
    names = [name for name, _, _ in (*OUTPUTS, OOD_OUTPUT)][1:len(alone)]
    for name, one, many in zip(names, alone[1:], batched[1:], strict=True):
        diff = float((one[0].float() - many[position].float()).abs().max())
        if name == OOD_OUTPUT[0]:  # unbounded: relative to its size
            diff /= max(1.0, float(one[0].abs().max()))
        if diff > BATCH_TOLERANCE:
            raise ContractError(f"{path}: {name} of the {image} probe image moves by {diff:.4f} "
                                f"{where}: batch items interact")
        drift = max(drift, diff)
    return drift


def smoke_test(path: Path, num_classes: int) -> dict[str, Any]:
    """Run the contract's smoke inferences on a TorchScript file; ContractError if it does not
    fit. Each probe image runs alone, then in mixed batches (in order, reversed, a clean image
    next to a noisy one, and LARGEST_BATCH shuffled repeats): every output of every image must
    match its result alone, whatever its neighbours, position and batch size."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError or ValueError variants
        raise ContractError(f"{path}: does not load as TorchScript: "
                            f"{str(error).splitlines()[0]}") from error
    _check_input_name(path, model)
    model.eval()
    probes = _probe_images()
    names = list(probes)
    images = torch.stack(list(probes.values()))
    alone = [_infer(path, model, images[i:i + 1], num_classes) for i in range(len(names))]
    shuffle = torch.randperm(LARGEST_BATCH, generator=torch.Generator().manual_seed(0))
    batches = [list(range(len(names))), list(reversed(range(len(names)))),
               [names.index("noise"), names.index("grey")],
               (torch.arange(LARGEST_BATCH) % len(names))[shuffle].tolist()]
    drift = 0.0
    for batch in batches:
        batched = _infer(path, model, images[batch], num_classes)
        for position, index in enumerate(batch):
            drift = max(drift, _batch_drift(path, names[index], alone[index], batched, position,
                                           [names[i] for i in batch]))
    report: dict[str, Any] = {
        "input": f"uint8 [N,3,{SIZE},{SIZE}]",
        "outputs": {name: f"{dtype} [N, {', '.join(map(str, shape))}]"
                    for name, dtype, shape in (*OUTPUTS, OOD_OUTPUT)[:len(alone[0])]},
        "image_score": {name: round(float(outputs[2][0, 0]), 4)
                        for name, outputs in zip(names, alone, strict=True)},
        "batch_sizes": [1, *(len(batch) for batch in batches)],
        "batch_consistency_max_abs_diff": drift}
    if len(alone[0]) == 4:
        report["ood_score"] = {name: round(float(outputs[3][0, 0]), 3)
                               for name, outputs in zip(names, alone, strict=True)}
    return report


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
        "source": str(source.resolve()),
        "installed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "smoke_test": smoke,
        **(extra_card or {}),
    }
    # Never let a supplied card override the measured digest or the outputs the file has
    # (the configs list the served version's outputs).
    model_card["sha256"] = sha
    model_card["outputs"] = [*card.OUTPUT_CONTRACT,
                             *([card.OOD_OUTPUT] if "ood_score" in smoke else [])]
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
