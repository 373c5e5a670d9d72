"""Run the real CPU Triton server (from the nvidia-pytriton wheel) in the foreground.

    .venv-model/bin/python -m triton_models.serve [--repository DIR] [--address 127.0.0.1]
        [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]

Before starting it checks every served model file against its config's `sha256_v<N>` and
exits with status 2 and a message naming the file if one is missing, truncated or altered.
It then replaces itself with `tritonserver` (exec), so the PID a supervisor holds is the
server's and SIGTERM stops it (about 4 s). It binds 127.0.0.1 unless `--address` says
otherwise (a container needs 0.0.0.0). Ready when
`GET http://127.0.0.1:<http-port>/v2/health/ready` answers 200 (see `wait_ready`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from triton_models.repository import CPU_REPOSITORY, config_parameters
from triton_models.verify import ModelFileError, check_file

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKEND_DIR = REPO_ROOT / ".triton-backend"


def pytriton_server_dir() -> Path:
    import pytriton  # the wheel ships tritonserver, the Python backend and its stubs

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def build_backend_dir(target: Path = BACKEND_DIR) -> Path:
    """`target/python/` with symlinks to the wheel's Python backend and the stub matching
    this interpreter. Links (not copies) keep the binaries' relative library paths valid."""
    server = pytriton_server_dir()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    links = {
        "libtriton_python.so": server / "backends/python/libtriton_python.so",
        "triton_python_backend_utils.py": server / "backends/python/triton_python_backend_utils.py",
        "triton_python_backend_stub": server / f"python_backend_stubs/{version}"
                                               "/triton_python_backend_stub",
    }
    for name, source in links.items():
        if not source.exists():
            raise FileNotFoundError(f"{source}: missing from nvidia-pytriton; reinstall it")
        link = python_dir / name
        if link.is_symlink() or link.exists():
            if link.resolve() == source.resolve():
                continue
            link.unlink()
        link.symlink_to(source)
    return target


def check_repository(repository: Path) -> None:
    """Check each model's served version files against the config's sha256 parameters."""
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        text = config.read_text()
        params = config_parameters(text)
        torchscript_dir = config.parent / params.get("torchscript_dir", ".")
        served = re.search(r"specific:\s*\{\s*versions:\s*\[([\d,\s]+)\]", text)
        versions = ([v.strip() for v in served.group(1).split(",")] if served else
                    [k.removeprefix("sha256_v") for k in params if k.startswith("sha256_v")])
        for version in versions:
            path = (torchscript_dir / version / "model.pt").resolve()
            expected = params.get(f"sha256_v{version}")
            if expected is None:
                raise ModelFileError(f"{path}: {config} has no sha256_v{version} parameter")
            check_file(path, expected)


def server_command(repository: Path, http: int, grpc: int, metrics: int,
                   backend_dir: Path, address: str = "127.0.0.1") -> list[str]:
    return [
        str(pytriton_server_dir() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        f"--http-address={address}", f"--http-port={http}",
        f"--grpc-address={address}", f"--grpc-port={grpc}",
        f"--metrics-address={address}", f"--metrics-port={metrics}",
        "--pinned-memory-pool-byte-size=0",
        "--allow-gpu-metrics=false",
        "--backend-config=python,shm-default-byte-size=33554432",
    ]


def server_env() -> dict[str, str]:
    """The stub finds its Python prefix through `python3` on PATH: the running venv's bin/
    goes first so model.py can import torch. libpython's folder goes on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH")] if p)
    return env


def wait_ready(http_port: int = 8000, timeout: float = 120.0) -> None:
    """Block until the server's /v2/health/ready answers 200; TimeoutError otherwise."""
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"Triton not ready at {url} after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=CPU_REPOSITORY)
    parser.add_argument("--address", default="127.0.0.1",
                        help="address every endpoint binds (0.0.0.0 inside a container)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--backend-dir", type=Path, default=BACKEND_DIR,
                        help="where to build the backend folder of links (gitignored)")
    args = parser.parse_args(argv)
    repository = args.repository.resolve()
    try:
        check_repository(repository)
    except ModelFileError as error:
        print(f"inspectq serve: refusing to start: {error}", file=sys.stderr)
        sys.exit(2)
    command = server_command(repository, args.http_port, args.grpc_port, args.metrics_port,
                             build_backend_dir(args.backend_dir), args.address)
    sys.stdout.flush()
    os.execve(command[0], command, server_env())


if __name__ == "__main__":
    main()
