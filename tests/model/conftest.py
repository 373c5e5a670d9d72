"""Shared fixtures for the model tests (run with `.venv-model/bin/python -m pytest tests/model`).

They need torch, which only the model venv has: under the service venv (no torch) this folder
is skipped at collection instead of failing on imports.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from triton_models.repository import CPU_REPOSITORY, GPU_REPOSITORY, Repositories

collect_ignore_glob = [] if importlib.util.find_spec("torch") else ["test_*.py"]


@pytest.fixture()
def repos_copy(tmp_path: Path) -> Repositories:
    """A private copy of both repositories (CPU model.py links copied as files)."""
    gpu, cpu = tmp_path / "repository", tmp_path / "repository_cpu"
    shutil.copytree(GPU_REPOSITORY, gpu)
    shutil.copytree(CPU_REPOSITORY, cpu, symlinks=False)
    return Repositories(gpu, cpu)
