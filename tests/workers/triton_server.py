"""Start a real Triton Inference Server (from the nvidia-pytriton wheel in .venv-model)
serving the deterministic fixture model of ``fixture_model/model.py`` as ``inspectq_seg``.

Follows the recipe in /work/shared/notes/local-triton.md: a backend folder of symlinks to
the wheel's Python backend, the model venv's bin/ first on PATH so the stub finds numpy<2.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from devstack.ports import http_ok, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_VENV = REPO_ROOT / ".venv-model"
FIXTURE_CODE = Path(__file__).resolve().parent / "fixture_model" / "model.py"
CLASSES = ("background", "scratch", "pit")


def fixture_sha256() -> str:
    """The fixture's "model file" digest, reported in results as the model sha256."""
    return hashlib.sha256(FIXTURE_CODE.read_bytes()).hexdigest()


def _server_dir() -> Path:
    found = sorted(MODEL_VENV.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not found:
        raise RuntimeError(f"no tritonserver under {MODEL_VENV}: install nvidia-pytriton there")
    return found[0]


def _config(max_batch: int) -> str:
    return f"""name: "inspectq_seg"
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "images" data_type: TYPE_UINT8 dims: [ 3, 256, 256 ] }} ]
output [
  {{ name: "class_map" data_type: TYPE_UINT8 dims: [ 256, 256 ] }},
  {{ name: "defect_prob" data_type: TYPE_FP16 dims: [ 256, 256 ] }},
  {{ name: "image_score" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "ood_score" data_type: TYPE_FP32 dims: [ 1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
parameters {{ key: "classes" value: {{ string_value: "{",".join(CLASSES)}" }} }}
parameters {{ key: "sha256_v1" value: {{ string_value: "{fixture_sha256()}" }} }}
"""


@dataclass
class TritonProcess:
    process: subprocess.Popen[bytes]
    grpc_url: str
    http_port: int
    log_path: Path

    def slow_requests(self) -> int:
        """How many "slow" requests (see fixture_model/model.py) have started so far."""
        path = self.log_path.parent / "slow-requests.log"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_triton(workdir: Path, http_port: int, grpc_port: int, metrics_port: int,
                 timeout_s: float = 90) -> TritonProcess:
    """Start the server and wait until it is ready; raise (loudly) if it cannot start."""
    server = _server_dir()
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    python_backend = server / "backends" / "python"
    for name, source in {
        "libtriton_python.so": python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub":
            server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub",
    }.items():
        link = backend / name
        if not link.exists():
            link.symlink_to(source)
    model_dir = workdir / "models" / "inspectq_seg"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(_config(max_batch=16))
    (model_dir / "1" / "model.py").write_bytes(FIXTURE_CODE.read_bytes())
    env = dict(os.environ)
    env["PATH"] = f"{MODEL_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    log_path = workdir / "triton.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(server / "bin" / "tritonserver"),
                f"--model-repository={workdir / 'models'}",
                f"--backend-directory={workdir / 'backends'}",
                "--http-address=127.0.0.1", f"--http-port={http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
                "--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false",
                "--backend-config=python,shm-default-byte-size=16777216",
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    triton = TritonProcess(process, f"127.0.0.1:{grpc_port}", http_port, log_path)
    ready = f"http://127.0.0.1:{http_port}/v2/health/ready"
    try:
        wait_until(lambda: process.poll() is not None or http_ok(ready), timeout_s, "Triton")
    except TimeoutError as error:
        triton.stop()
        raise RuntimeError(
            f"Triton not ready; see {log_path}:\n{log_path.read_text()[-3000:]}"
        ) from error
    if process.poll() is not None:
        raise RuntimeError(f"Triton exited ({process.returncode}); see {log_path}:\n"
                           f"{log_path.read_text()[-3000:]}")
    return triton
