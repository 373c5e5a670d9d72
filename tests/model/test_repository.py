"""Both Triton configs expose the same contract; the shipped file is the one its card and
configs name; the card holds the required facts and the metrics still hold."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_models import card, metrics, mvtec, repository, synth
from triton_models.repository import Repositories
from triton_models.verify import sha256_of

REPOS = Repositories()


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def io_signature(config: model_config_pb2.ModelConfig) -> list[tuple[str, int, list[int]]]:
    return [(t.name, t.data_type, list(t.dims)) for t in [*config.input, *config.output]]


def params(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


GPU = parse(REPOS.gpu_model / "config.pbtxt")
CPU = parse(REPOS.cpu_model / "config.pbtxt")
SERVED = REPOS.served_version()
CARD = card.read(REPOS.model_file(SERVED).parent)


CONTRACT = [
    ("images", model_config_pb2.TYPE_UINT8, [3, 256, 256]),
    ("class_map", model_config_pb2.TYPE_UINT8, [256, 256]),
    ("defect_prob", model_config_pb2.TYPE_FP16, [256, 256]),
    ("image_score", model_config_pb2.TYPE_FP32, [1]),
]
OOD = ("ood_score", model_config_pb2.TYPE_FP32, [1])
SERVED_HAS_OOD = "ood_score" in [output["name"] for output in CARD["outputs"]]


def test_both_configs_expose_the_same_contract() -> None:
    assert GPU.name == CPU.name == "inspectq_seg"
    assert io_signature(GPU) == io_signature(CPU) == CONTRACT + ([OOD] if SERVED_HAS_OOD else [])
    assert GPU.max_batch_size == CPU.max_batch_size >= 16
    assert list(GPU.version_policy.specific.versions) == [SERVED]
    assert list(CPU.version_policy.specific.versions) == [SERVED]
    shared = {k: v for k, v in params(GPU).items() if k == "classes" or k.startswith("sha256_v")}
    assert shared == {k: v for k, v in params(CPU).items() if k in shared}
    assert params(GPU)["classes"] == ",".join(CARD["classes"])
    assert params(GPU)["classes"] == "background,scratch,pit,crack,stain"


def test_gpu_config_is_a_production_libtorch_config() -> None:
    assert GPU.platform == "pytorch_libtorch"
    preferred = list(GPU.dynamic_batching.preferred_batch_size)
    assert preferred and max(preferred) <= GPU.max_batch_size
    assert 0 < GPU.dynamic_batching.max_queue_delay_microseconds <= 5000
    assert [g.kind for g in GPU.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert sorted(w.batch_size for w in GPU.model_warmup) == sorted(preferred)
    for warmup in GPU.model_warmup:
        assert warmup.inputs["images"].data_type == model_config_pb2.TYPE_UINT8
    assert {"INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"} <= set(params(GPU))


def test_cpu_config_runs_the_same_file_through_the_python_backend() -> None:
    assert CPU.backend == "python"
    assert [g.kind for g in CPU.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    warmed = {w.batch_size for w in CPU.model_warmup}
    assert set(CPU.dynamic_batching.preferred_batch_size) <= warmed
    for version in REPOS.versions():
        code = REPOS.cpu_model / str(version) / "model.py"
        assert code.resolve() == (repository.PACKAGE / repository.BACKEND_CODE)
        served_file = (REPOS.cpu_model / params(CPU)["torchscript_dir"] / str(version)
                       / "model.pt").resolve()
        assert served_file == REPOS.model_file(version).resolve()


def test_configs_are_what_the_renderer_writes(repos_copy: Repositories) -> None:
    repository.sync(repos_copy, SERVED)
    for name in ("gpu_model", "cpu_model"):
        written = (getattr(repos_copy, name) / "config.pbtxt").read_text()
        committed = (getattr(REPOS, name) / "config.pbtxt").read_text()
        assert written == committed


def test_ood_score_is_listed_only_while_the_served_version_has_it(
        repos_copy: Repositories) -> None:
    with_ood = repos_copy.model_file(SERVED).parent
    info = card.read(with_ood)
    info["outputs"] = [*card.OUTPUT_CONTRACT, card.OOD_OUTPUT]
    card.write(with_ood, info)
    repository.sync(repos_copy, SERVED)
    for name in ("gpu_model", "cpu_model"):
        config = parse(getattr(repos_copy, name) / "config.pbtxt")
        assert io_signature(config) == [*CONTRACT, OOD]
    info["outputs"] = card.OUTPUT_CONTRACT
    card.write(with_ood, info)
    repository.sync(repos_copy, SERVED)
    for name in ("gpu_model", "cpu_model"):
        assert io_signature(parse(getattr(repos_copy, name) / "config.pbtxt")) == CONTRACT


def test_file_sha256_matches_card_and_configs() -> None:
    for version in REPOS.versions():
        path = REPOS.model_file(version)
        digest = sha256_of(path)
        assert digest == card.read(path.parent)["sha256"]
        assert params(GPU)[f"sha256_v{version}"] == digest == params(CPU)[f"sha256_v{version}"]
    assert REPOS.model_file(SERVED).stat().st_size < 20 * 2**20


def test_card_holds_the_required_facts() -> None:
    for key in ("sha256", "classes", "input", "outputs", "training", "data", "metrics"):
        assert key in CARD
    for key in ("command", "seed", "training_seconds"):
        assert key in CARD["training"]
    m = CARD["metrics"]
    assert m["images"] >= 300
    assert m["mean_dice"] >= 0.70 and m["image_auroc"] >= 0.98
    for cls in synth.DEFECT_CLASSES:
        assert {"dice", "iou"} <= set(m["per_class"][cls])
    assert "image_auroc" in CARD["label_only"]["metrics"]
    assert CARD["training"]["training_seconds"] < 15 * 60
    assert (REPOS.model_file(SERVED).parent / card.CARD_MD).read_text().count("Dice") >= 2


def test_shipped_model_still_detects_defects(tmp_path: Path) -> None:
    """Fresh held-out images (a seed the card's data never used): the claims still hold."""
    synth.generate(tmp_path / "fresh", count=48, seed=4242)
    data = mvtec.load(tmp_path / "fresh", list(synth.DEFECT_CLASSES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(REPOS.model_file(SERVED)))
    result = metrics.evaluate(model, data)
    assert result["image_auroc"] >= 0.95
    assert result["mean_dice"] >= 0.55


@pytest.mark.parametrize("batch", [1, 3])
def test_exported_graph_follows_the_contract(batch: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(REPOS.model_file(SERVED)))
    images = torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, (batch, 3, 256, 256), dtype=np.uint8))
    outputs = model(images)
    assert len(outputs) == (4 if SERVED_HAS_OOD else 3)
    class_map, defect_prob, score = outputs[:3]
    if SERVED_HAS_OOD:
        assert outputs[3].dtype == torch.float32 and outputs[3].shape == (batch, 1)
        assert (outputs[3] > 1).all()  # random noise is out of the domain of metal surfaces
    assert class_map.dtype == torch.uint8 and class_map.shape == (batch, 256, 256)
    assert defect_prob.dtype == torch.float16 and defect_prob.shape == (batch, 256, 256)
    assert score.dtype == torch.float32 and score.shape == (batch, 1)
    assert int(class_map.max()) < len(CARD["classes"])
