"""The two Triton model repositories and their configs, rendered from one description.

    triton_models/repository/inspectq_seg/         GPU: NVIDIA's Triton container, libtorch
        config.pbtxt
        <N>/model.pt  <N>/model_card.json  <N>/model_card.md
    triton_models/repository_cpu/inspectq_seg/     CPU: the nvidia-pytriton tritonserver
        config.pbtxt                               (Python backend only)
        <N>/model.py -> ../../../python_backend_model.py

The CPU model loads the GPU repository's `<N>/model.pt` (config parameter `torchscript_dir`),
so both serve the same file. Both configs are rendered by this module from the version
folders' model cards and the served version, so they cannot drift apart: the contract part
(name, inputs, outputs, max_batch_size, `classes`, `sha256_v<N>`) is identical. The optional
output `ood_score` is listed only when the served version's card has it (Triton's PyTorch
backend maps outputs by position and refuses a config listing more than the model returns).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from triton_models import card

PACKAGE = Path(__file__).resolve().parent
GPU_REPOSITORY = PACKAGE / "repository"
CPU_REPOSITORY = PACKAGE / "repository_cpu"
MODEL_NAME = "inspectq_seg"
MAX_BATCH_SIZE = 32
BACKEND_CODE = "python_backend_model.py"


@dataclass
class Repositories:
    gpu: Path = GPU_REPOSITORY
    cpu: Path = CPU_REPOSITORY

    @property
    def gpu_model(self) -> Path:
        return self.gpu / MODEL_NAME

    @property
    def cpu_model(self) -> Path:
        return self.cpu / MODEL_NAME

    def versions(self) -> list[int]:
        """Version numbers that have a TorchScript file folder in the GPU repository."""
        if not self.gpu_model.is_dir():
            return []
        return sorted(int(p.name) for p in self.gpu_model.iterdir()
                      if p.is_dir() and p.name.isdigit())

    def model_file(self, version: int) -> Path:
        return self.gpu_model / str(version) / "model.pt"

    def served_version(self) -> int:
        """The version named in the GPU config's `version_policy: specific`."""
        text = (self.gpu_model / "config.pbtxt").read_text()
        found = re.search(r"specific:\s*\{\s*versions:\s*\[\s*(\d+)\s*\]", text)
        if not found:
            raise ValueError(f"{self.gpu_model / 'config.pbtxt'}: no specific version_policy")
        return int(found.group(1))


def config_parameters(config_text: str) -> dict[str, str]:
    """`parameters` key/value strings of a config.pbtxt rendered by this module."""
    pattern = r'parameters\s*\{\s*key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"'
    return dict(re.findall(pattern, config_text))


_IO = """input [
  {{
    name: "images"
    data_type: TYPE_UINT8
    dims: [ 3, 256, 256 ]
  }}
]
output [
  {{
    name: "class_map"
    data_type: TYPE_UINT8
    dims: [ 256, 256 ]
  }},
  {{
    name: "defect_prob"
    data_type: TYPE_FP16
    dims: [ 256, 256 ]
  }},
  {{
    name: "image_score"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}{ood}
]
"""
_OOD = """,
  {
    name: "ood_score"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }"""
OOD_OUTPUT = "ood_score"


def _parameters(items: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
                   for k, v in items.items())


def _warmup(batch_sizes: list[int]) -> str:
    # TorchScript re-optimizes its graph for each new input shape; warming every preferred
    # batch size at load keeps that cost off the first real requests.
    entries = ",\n".join(
        f"""  {{
    name: "warmup_batch_{b}"
    batch_size: {b}
    count: 2
    inputs {{
      key: "images"
      value: {{ data_type: TYPE_UINT8 dims: [ 3, 256, 256 ] random_data: true }}
    }}
  }}""" for b in batch_sizes)
    return f"model_warmup [\n{entries}\n]\n"


def _common(served: int, kind_line: str, ood: bool) -> str:
    return (f'name: "{MODEL_NAME}"\n{kind_line}\n'
            f"max_batch_size: {MAX_BATCH_SIZE}\n"
            f"version_policy: {{ specific: {{ versions: [ {served} ] }} }}\n"
            + _IO.format(ood=_OOD if ood else ""))


def _contract_parameters(classes: list[str], shas: dict[int, str]) -> dict[str, str]:
    params = {"classes": ",".join(classes)}
    params.update({f"sha256_v{v}": sha for v, sha in sorted(shas.items())})
    return params


GPU_PREFERRED = [8, 16, 32]
CPU_PREFERRED = [4, 8]


def render_gpu_config(served: int, classes: list[str], shas: dict[int, str],
                      ood: bool) -> str:
    params = {
        # libtorch backend knobs: inference mode, one inter-op thread, intra-op threads
        # bounded so several instances or models on one host do not oversubscribe cores.
        "INFERENCE_MODE": "true",
        "INTRA_OP_THREAD_COUNT": "4",
        "INTER_OP_THREAD_COUNT": "1",
        "ENABLE_CACHE_CLEANING": "false",
        **_contract_parameters(classes, shas),
    }
    return (
        "# GPU deployment in NVIDIA's Triton container (PyTorch/libtorch backend).\n"
        "# Rendered by triton_models.repository; edit with `inspectq model`.\n"
        + _common(served, 'platform: "pytorch_libtorch"', ood)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, GPU_PREFERRED))} ]\n"
        "  max_queue_delay_microseconds: 2000\n}\n"
        "instance_group [ { kind: KIND_GPU count: 1 } ]\n"
        + _parameters(params) + _warmup(GPU_PREFERRED)
    )


def render_cpu_config(served: int, classes: list[str], shas: dict[int, str],
                      torchscript_dir: str, ood: bool) -> str:
    """`torchscript_dir`: the GPU model folder, relative to the CPU model folder."""
    # One intra-op thread: on a small CPU box Triton shares the cores with the workers, API
    # and S3, and torch's spinning thread pool then loses more to contention than it gains
    # (measured by `make bench`: end-to-end 19 -> 27 images/s on 2 cores; batches of ~4
    # keep the one thread busy).
    params = {
        "torchscript_dir": torchscript_dir,
        "intra_op_threads": "1",
        "inter_op_threads": "1",
        **_contract_parameters(classes, shas),
    }
    return (
        "# CPU variant for the tritonserver of the nvidia-pytriton wheel (Python backend).\n"
        "# Rendered by triton_models.repository; edit with `inspectq model`.\n"
        + _common(served, 'backend: "python"', ood)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, CPU_PREFERRED))} ]\n"
        "  max_queue_delay_microseconds: 2000\n}\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        + _parameters(params) + _warmup([1, *CPU_PREFERRED])
    )


def sync(repos: Repositories, served: int) -> None:
    """Rewrite both configs from the version folders' cards, serving version `served`, and
    make sure every version has its CPU folder (a link to the shared backend code)."""
    versions = repos.versions()
    if served not in versions:
        raise ValueError(f"version {served} is not in {repos.gpu_model} (have {versions})")
    shas = {v: card.read(repos.model_file(v).parent)["sha256"] for v in versions}
    served_card = card.read(repos.model_file(served).parent)
    classes = served_card["classes"]
    ood = OOD_OUTPUT in [output["name"] for output in served_card["outputs"]]
    for v in versions:
        folder = repos.cpu_model / str(v)
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "model.py"
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(PACKAGE / BACKEND_CODE, folder))
    (repos.gpu_model / "config.pbtxt").write_text(
        render_gpu_config(served, classes, shas, ood))
    torchscript_dir = os.path.relpath(repos.gpu_model, repos.cpu_model)
    (repos.cpu_model / "config.pbtxt").write_text(
        render_cpu_config(served, classes, shas, torchscript_dir, ood))
