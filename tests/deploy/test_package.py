"""The installed package, not only the checkout: a wheel carries every library, the
`inspectq` command and the model repositories (so `triton_models` serves from site-packages)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.deploy.conftest import REPO


def test_wheel_has_the_command_the_packages_and_the_model(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("inspectq-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "inspectq = inspectq_cli.main:main" in archive.read(entry_points).decode()
    for package in ("inspectq", "inspectq_cli", "api", "api/routes", "workers",
                    "triton_models"):
        assert f"{package}/__init__.py" in names, package
    for data in ("repository/inspectq_seg/config.pbtxt", "repository/inspectq_seg/1/model.pt",
                 "repository/inspectq_seg/1/model_card.json",
                 "repository_cpu/inspectq_seg/config.pbtxt",
                 "repository_cpu/inspectq_seg/1/model.py"):
        assert f"triton_models/{data}" in names, data
    assert not any(name.startswith(("tests/", "devstack/")) for name in names)
