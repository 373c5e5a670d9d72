"""Checks that a served model file is the one its config and card name (stdlib only).

Used by `python -m triton_models.serve` before the server starts, by the CPU backend's
`initialize`, and by `inspectq model verify`. Every failure is a
`ModelFileError` whose message starts with the file's path.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path


class ModelFileError(Exception):
    """A model file is missing, damaged, or not the file its sha256 names."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, expected_sha256: str | None) -> str:
    """Return the file's sha256 after checking it exists, is a complete TorchScript archive
    (a zip with its central directory: truncation removes it) and, when given, matches."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file is missing")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: model file is empty")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a complete TorchScript archive (truncated or not a "
                             "torch.jit.save file)")
    actual = sha256_of(path)
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise ModelFileError(f"{path}: sha256 mismatch: file has {actual}, config/card expect "
                             f"{expected_sha256}")
    return actual
