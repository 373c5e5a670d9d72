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
from triton_models.synth import render
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


def _strip(defective: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 1600x256 strip of one synthetic surface (the model engineer's seeded generator),
    mirrored tile to tile so it has no seams; optionally the third 256 px panel carries a
    scratch. Returns the strip and the scratch's ground-truth box in strip pixels."""
    good, _ = render(5, 0, None)
    scratched, mask = render(5, 0, "scratch")  # same surface, same seed
    mirrored = good[:, ::-1]
    middle = scratched if defective else good
    strip = np.concatenate([good, mirrored, middle, mirrored, good, mirrored, good], axis=1)
    ys, xs = np.nonzero(mask)
    return strip[:, :1600].copy(), (int(xs.min()) + 512, int(ys.min()), int(xs.max()) + 513,
                                    int(ys.max()) + 1)


def _overlaps(a: list[int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_trained_model_passes_a_clean_strip_and_finds_the_scratch(
    services: Services, trained_triton: str
) -> None:
    real = build_services(services.settings.model_copy(update={"triton_url": trained_triton}))
    clean, _ = _strip(defective=False)
    passed = inspect_job(real, submit(services, png(clean)))
    assert passed is not None and passed.status is Status.DONE, passed.error
    assert passed.result.decision == "PASS" and passed.result.defects == []

    scratched, truth = _strip(defective=True)
    final = inspect_job(real, submit(services, png(scratched)))
    assert final is not None and final.status is Status.DONE, final.error
    result = final.result.model_dump(mode="json", by_alias=True)  # what a client reads
    assert result["decision"] == "REJECT" and (result["width"], result["height"]) == (1600, 256)
    on_scratch = [d for d in result["defects"] if _overlaps(d["bbox"], truth)]
    by_class: dict[str, int] = {}
    for region in on_scratch:
        by_class[region["class"]] = by_class.get(region["class"], 0) + region["area_px"]
    # Most of what was found on the scratch is called a scratch.
    assert max(by_class, key=by_class.__getitem__) == "scratch", on_scratch
    assert all(d["bbox"][0] >= 512 and d["bbox"][2] <= 768 for d in result["defects"]
               if d["score"] > 0.9)  # confident regions lie on the scratched panel
    model_file = GPU_MODEL / result["model"]["version"] / "model.pt"
    assert result["model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
