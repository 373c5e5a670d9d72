"""Bring-your-own-model: install, select/roll back, and clear refusals of bad files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from torch import Tensor

from inspectq_cli.main import cli
from triton_models import byom, card, repository, serve
from triton_models.repository import Repositories, config_parameters
from triton_models.verify import ModelFileError, sha256_of

SHIPPED = Repositories().model_file(Repositories().served_version())


def inspectq_model(repos: Repositories, *args: str) -> Result:
    """``inspectq model --gpu-repository ... --cpu-repository ... ARGS``, in-process."""
    return CliRunner().invoke(cli, ["model", "--gpu-repository", str(repos.gpu),
                                    "--cpu-repository", str(repos.cpu), *args])


def run_byom(repos: Repositories, *args: str) -> None:
    result = inspectq_model(repos, *args)
    assert result.exit_code == 0, (result.output, result.exception)


def refused(repos: Repositories, *args: str) -> str:
    result = inspectq_model(repos, *args)
    assert result.exit_code == 1, result.output
    assert "refused" in result.stderr
    return result.stderr


class WrongDtype(torch.nn.Module):
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = images.shape[0]
        return (torch.zeros(n, 256, 256), torch.zeros(n, 256, 256, dtype=torch.float16),
                torch.zeros(n, 1))


class WrongShape(torch.nn.Module):
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = images.shape[0]
        return (torch.zeros(n, 128, 128, dtype=torch.uint8),
                torch.zeros(n, 128, 128, dtype=torch.float16), torch.zeros(n, 1))


class OneOutput(torch.nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images.float().mean((1, 2, 3))


class OutOfRange(torch.nn.Module):
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = images.shape[0]
        prob = images[:, 0].to(torch.float16)  # 0..255, not a probability
        return torch.zeros(n, 256, 256, dtype=torch.uint8), prob, torch.zeros(n, 1)


class BatchLeak(torch.nn.Module):
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = images.shape[0]
        # Shares the score out over the batch: alone an image scores 1, with a neighbour ~0.5.
        brightness = images.float().mean((1, 2, 3)).unsqueeze(1)
        score = brightness / brightness.sum()
        return (torch.zeros(n, 256, 256, dtype=torch.uint8),
                torch.zeros(n, 256, 256, dtype=torch.float16), score)


class WrongInputName(torch.nn.Module):
    """Fits the contract except that Triton binds the input `images` by argument name."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        return (torch.zeros(n, 256, 256, dtype=torch.uint8),
                torch.zeros(n, 256, 256, dtype=torch.float16), torch.zeros(n, 1))


class BatchRelativeScore(torch.nn.Module):
    """Scores an image's roughness against the batch mean: alone every image scores 0.5, and so
    do two noise images together (both saturate), but a clean image next to rough ones ~0."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = images.shape[0]
        roughness = (images.float().std((1, 2, 3)) / 30).clamp(max=1).unsqueeze(1)
        score = (0.5 + roughness - roughness.mean()).clamp(0, 1)
        return (torch.zeros(n, 256, 256, dtype=torch.uint8),
                torch.zeros(n, 256, 256, dtype=torch.float16), score)


class FirstImageReference(torch.nn.Module):
    """Compares every image with the batch's first one as a golden sample: the first image (and
    an image alone) always comes out clean, the others depend on their neighbour."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        difference = (images.float() - images[:1].float()).abs().mean(1) / 255
        class_map = (difference > 0.5).to(torch.uint8)
        return class_map, difference.half(), difference.mean((1, 2)).unsqueeze(1)


class WithOod(torch.nn.Module):
    """Fits the contract with the optional fourth output: ood_score from the brightness."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = images.shape[0]
        brightness = images.float().mean((1, 2, 3)).unsqueeze(1)
        return (torch.zeros(n, 256, 256, dtype=torch.uint8),
                torch.zeros(n, 256, 256, dtype=torch.float16), torch.zeros(n, 1),
                brightness / 64)


class NegativeOod(torch.nn.Module):
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = images.shape[0]
        return (torch.zeros(n, 256, 256, dtype=torch.uint8),
                torch.zeros(n, 256, 256, dtype=torch.float16), torch.zeros(n, 1),
                -torch.ones(n, 1))


def scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_install_select_and_roll_back(repos_copy: Repositories, tmp_path: Path) -> None:
    served = repos_copy.served_version()
    user_file = tmp_path / "mine.pt"
    shutil.copyfile(SHIPPED, user_file)
    run_byom(repos_copy, "install", str(user_file), "--sha256", sha256_of(user_file))
    new = max(repos_copy.versions())
    assert new == served + 1 and repos_copy.served_version() == served
    for config in (repos_copy.gpu_model / "config.pbtxt", repos_copy.cpu_model / "config.pbtxt"):
        values = config_parameters(config.read_text())
        assert values[f"sha256_v{new}"] == sha256_of(user_file)
    assert (repos_copy.cpu_model / str(new) / "model.py").exists()
    installed = card.read(repos_copy.model_file(new).parent)
    assert installed["sha256"] == sha256_of(user_file)
    assert installed["smoke_test"]["outputs"]["defect_prob"] == "float16 [N, 256, 256]"
    assert installed["smoke_test"]["batch_consistency_max_abs_diff"] <= byom.BATCH_TOLERANCE

    run_byom(repos_copy, "select", str(new))
    for config in (repos_copy.gpu_model / "config.pbtxt", repos_copy.cpu_model / "config.pbtxt"):
        assert f"versions: [ {new} ]" in config.read_text()
    run_byom(repos_copy, "select", str(served))  # roll back
    assert repos_copy.served_version() == served
    assert len(byom.verify(repos_copy)) == len(repos_copy.versions())


def test_a_model_with_ood_score_is_served_with_it_and_one_without_again_without(
        repos_copy: Repositories, tmp_path: Path) -> None:
    served = repos_copy.served_version()
    path = scripted(WithOod(), tmp_path / "ood.pt")
    run_byom(repos_copy, "install", str(path), "--select")
    new = repos_copy.served_version()
    installed = card.read(repos_copy.model_file(new).parent)
    assert installed["outputs"][-1]["name"] == "ood_score"
    assert installed["smoke_test"]["ood_score"]["grey"] == 2.0  # 128 / 64
    for config in (repos_copy.gpu_model / "config.pbtxt", repos_copy.cpu_model / "config.pbtxt"):
        assert config.read_text().count('name: "ood_score"') == 1
    run_byom(repos_copy, "select", str(served))
    had_ood = card.read(repos_copy.model_file(served).parent)["outputs"][-1]["name"]
    for config in (repos_copy.gpu_model / "config.pbtxt", repos_copy.cpu_model / "config.pbtxt"):
        assert ('name: "ood_score"' in config.read_text()) == (had_ood == "ood_score")


def test_refuses_missing_truncated_and_mismatched_files(
        repos_copy: Repositories, tmp_path: Path) -> None:
    before = repos_copy.versions()
    missing = tmp_path / "nope.pt"
    message = refused(repos_copy, "install", str(missing))
    assert f"{missing}: model file is missing" in message

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(SHIPPED.read_bytes()[: SHIPPED.stat().st_size // 2])
    message = refused(repos_copy, "install", str(truncated))
    assert str(truncated) in message and "truncated" in message

    not_torchscript = tmp_path / "notes.pt"
    with zipfile.ZipFile(not_torchscript, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    message = refused(repos_copy, "install", str(not_torchscript))
    assert f"{not_torchscript}: does not load as TorchScript" in message

    copy = tmp_path / "copy.pt"
    shutil.copyfile(SHIPPED, copy)
    message = refused(repos_copy, "install", str(copy), "--sha256", "0" * 64)
    assert f"{copy}: sha256 mismatch" in message
    assert repos_copy.versions() == before


@pytest.mark.parametrize(("module", "expected"), [
    (WrongDtype(), "output class_map is torch.float32"),
    (WrongShape(), "output class_map is torch.uint8 [1, 128, 128]"),
    (OneOutput(), "forward must return 3 tensors"),
    (OutOfRange(), "defect_prob must be finite and within 0..1"),
    (NegativeOod(), "ood_score must be finite and >= 0"),
    (BatchLeak(), "batch items interact"),
    (WrongInputName(), "forward takes (x), the contract needs exactly one input named 'images'"),
    (BatchRelativeScore(), "image_score of the grey probe image moves by 0.5000 between alone "
                           "and position 0 of the batch [grey, stripes, noise, scratch_and_spot]"),
    (FirstImageReference(), "class_map of the stripes probe image changes in 32768 pixels "
                            "between alone and position 1 of the batch"),
], ids=lambda value: type(value).__name__ if isinstance(value, torch.nn.Module) else None)
def test_refuses_models_that_do_not_fit_the_contract(
        repos_copy: Repositories, tmp_path: Path,
        module: torch.nn.Module, expected: str) -> None:
    path = scripted(module, tmp_path / f"{type(module).__name__}.pt")
    message = refused(repos_copy, "install", str(path))
    assert f"{path}: " in message and expected in message
    assert not (repos_copy.gpu_model / str(max(repos_copy.versions()) + 1)).exists()


def test_tampered_served_file_is_caught_by_verify_and_serve(repos_copy: Repositories) -> None:
    served_file = repos_copy.model_file(repos_copy.served_version())
    data = bytearray(served_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served_file.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=f"{served_file}: sha256 mismatch"):
        byom.verify(repos_copy)
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        serve.check_repository(repos_copy.cpu)
    refused_start = subprocess.run(
        [sys.executable, "-m", "triton_models.serve", "--repository", str(repos_copy.cpu)],
        capture_output=True, text=True, timeout=60)
    assert refused_start.returncode == 2
    assert f"{served_file}: sha256 mismatch" in refused_start.stderr
    served_file.unlink()
    with pytest.raises(ModelFileError, match="model file is missing"):
        serve.check_repository(repos_copy.cpu)


def test_select_refuses_an_unknown_version(repos_copy: Repositories) -> None:
    with pytest.raises(ValueError, match="version 99 is not in"):
        repository.sync(repos_copy, 99)
