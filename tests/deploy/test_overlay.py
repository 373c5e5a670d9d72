"""The production overlay shown in docs/deploy.md works as documented: it renders on top of
the base, the result validates, the example Secrets are replaced, the images are retagged and
an empty S3 endpoint yields AWS S3 in the settings the pods read."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from inspectq.config import Settings
from tests.deploy.conftest import K8S_DIR, REPO, find, render, run, venv_tool

DOC = REPO / "docs" / "deploy.md"


def documented_overlay() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    (overlay,) = [b for b in blocks if "behavior: replace" in b]
    return overlay


@pytest.fixture
def overlay_dir(tmp_path: Path) -> Path:
    overlay = documented_overlay()
    assert "  - ../../k8s\n" in overlay
    base = os.path.relpath(K8S_DIR, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(overlay.replace("../../k8s", base))
    (tmp_path / "secrets.env").write_text(
        "INSPECTQ_S3_SECRET_ACCESS_KEY=site-secret\nINSPECTQ_API_KEY=\n"
    )
    (tmp_path / "api-keys.json").write_text('{"keys": []}\n')
    return tmp_path


def test_documented_overlay_renders_and_validates(
    overlay_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(overlay_dir)
    out = overlay_dir / "rendered.yaml"
    out.write_text(rendered)
    result = run([venv_tool("kubernetes-validate"), "--strict", "-k", "1.37.0", out])
    assert result.returncode == 0, result.stdout + result.stderr

    assert "CHANGE-ME" not in rendered, "the example Secret survived the overlay"
    assert "ghcr.io/inspectq" not in rendered, "an image was not retagged"
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    for name in list(os.environ):
        if name.startswith("INSPECTQ_"):
            monkeypatch.delenv(name)
    for name, value in find(objects, "ConfigMap", "inspectq-config")["data"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.s3_endpoint_url is None
    assert settings.s3_bucket == "acme-inspectq"
