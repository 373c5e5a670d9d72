"""The workers against the shipped, trained model on the real CPU Triton server, started the
way ops start it (``python -m triton_models.serve``).

Skipped, with the reason in pytest's summary, only while no trained model is committed under
``triton_models/repository_cpu``; once one is, a server that cannot start fails the test.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devstack.ports import http_ok, wait_until
from inspectq.jobs import Status
from tests.workers.conftest import png, submit
from workers.services import Services, build_services
from workers.tasks import inspect_job

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO_ROOT / "triton_models" / "repository_cpu" / "inspectq_seg" / "config.pbtxt"
GPU_MODEL = REPO_ROOT / "triton_models" / "repository" / "inspectq_seg"
PORTS = (28310, 28311, 28312)


@pytest.fixture(scope="module")
def trained_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CPU_CONFIG.exists():
        pytest.skip(f"no trained model committed yet ({CPU_CONFIG} is missing)")
    log_path = tmp_path_factory.mktemp("trained-triton") / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(REPO_ROOT / ".venv-model" / "bin" / "python"), "-m", "triton_models.serve",
             "--http-port", str(PORTS[0]), "--grpc-port", str(PORTS[1]),
             "--metrics-port", str(PORTS[2])],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    ready = f"http://127.0.0.1:{PORTS[0]}/v2/health/ready"
    try:
        wait_until(lambda: process.poll() is not None or http_ok(ready), 180, "trained Triton")
        if process.poll() is not None:
            raise RuntimeError(f"triton_models.serve exited:\n{log_path.read_text()[-3000:]}")
    except (TimeoutError, RuntimeError):
        process.kill()
        pytest.fail(f"Triton with the trained model did not start:\n"
                    f"{log_path.read_text()[-3000:]}")
    yield f"127.0.0.1:{PORTS[1]}"
    process.terminate()
    process.wait(timeout=30)


def test_trained_model_inspects_a_steel_strip(services: Services, trained_triton: str) -> None:
    real = build_services(services.settings.model_copy(update={"triton_url": trained_triton}))
    rng = np.random.default_rng(5)
    strip = rng.normal(120, 6, (256, 1600, 3)).clip(0, 255).astype(np.uint8)
    strip[100:104, 200:900] = 30  # a long dark scratch-like line
    final = inspect_job(real, submit(services, png(strip)))
    assert final is not None and final.status is Status.DONE, final.error
    result = final.result
    assert result["decision"] in ("PASS", "REVIEW", "REJECT")
    assert 0.0 <= result["score"] <= 1.0
    model_file = GPU_MODEL / result["model"]["version"] / "model.pt"
    assert result["model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    for defect in result["defects"]:
        x0, y0, x1, y1 = defect["bbox"]
        assert 0 <= x0 < x1 <= 1600 and 0 <= y0 < y1 <= 256
        assert defect["area_px"] >= services.settings.min_region_px
