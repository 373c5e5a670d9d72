"""Shared fixtures for the model tests (run with `.venv-model/bin/python -m pytest tests/model`).

They need torch, which only the model venv has. Under an interpreter without torch each test
file shows up as one skipped test that says why, instead of failing on its imports or
vanishing from the report; ``--require-torch`` (what ``make test`` passes) turns that into
an error, so the real suite can never skip the model silently.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from triton_models.repository import CPU_REPOSITORY, GPU_REPOSITORY, Repositories

NO_TORCH = "torch is not installed here: run these with the model venv (.venv-model)"
HAVE_TORCH = importlib.util.find_spec("torch") is not None


class _NeedsTorch(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(NO_TORCH)


class _TorchlessFile(pytest.File):
    """A test file that cannot be imported without torch: one skipped item instead."""

    def collect(self) -> list[pytest.Item]:
        return [_NeedsTorch.from_parent(self, name="needs torch")]


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector
                                ) -> pytest.File | None:
    if HAVE_TORCH:
        return None
    if parent.config.getoption("require_torch"):
        raise pytest.UsageError(f"--require-torch: {NO_TORCH}")
    return _TorchlessFile.from_parent(parent, path=module_path)


@pytest.fixture()
def repos_copy(tmp_path: Path) -> Repositories:
    """A private copy of both repositories (CPU model.py links copied as files)."""
    gpu, cpu = tmp_path / "repository", tmp_path / "repository_cpu"
    shutil.copytree(GPU_REPOSITORY, gpu)
    shutil.copytree(CPU_REPOSITORY, cpu, symlinks=False)
    return Repositories(gpu, cpu)
