"""API keys: which tenant a bearer key belongs to.

Keys are high-entropy random strings, so a plain sha256 is a safe way to store them (no
password stretching is needed); only the hashes are kept. The keys file is JSON::

    {"keys": [{"id": "k_...", "tenant": "acme", "sha256": "<hex>", "created_at": "..."}]}

It is managed with ``inspectq keys`` and re-read whenever it changes on disk, so a
revoked key stops working without a restart. ``Settings.api_key`` is a bootstrap key for
tenant ``default`` (empty disables it).

The same file holds each tenant's callback signing secret (``"signing_secrets": {tenant:
secret}``, read by ``inspectq.callbacks.SigningSecrets``): created with the tenant's first
key and shown once. Unlike the keys it is stored as is, since signing needs it; the file is
readable by its owner only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from inspectq.jobs import utc_now

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_TENANT = "default"
KEY_PREFIX = "iq_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    sha256: str
    created_at: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def read_keys(path: Path) -> list[ApiKey]:
    return [ApiKey(**entry) for entry in _read(path).get("keys", [])]


def write_keys(path: Path, keys: list[ApiKey], signing_secrets: dict[str, str] | None = None
               ) -> None:
    """Replace the file atomically (never a half-written file), readable by its owner only.
    The signing secrets stay as they are unless ``signing_secrets`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if signing_secrets is None:
        signing_secrets = _read(path).get("signing_secrets", {})
    body = json.dumps({"keys": [key.__dict__ for key in keys],
                       "signing_secrets": signing_secrets}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_key(path: Path, tenant: str) -> tuple[str, ApiKey]:
    """Create a key for ``tenant``; returns the plain key (shown once) and its stored entry.
    The tenant's first key also creates its signing secret (:func:`new_signing_secret`)."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(f"tenant must match {TENANT_PATTERN.pattern}")
    plain = new_key()
    entry = ApiKey(
        id="k_" + secrets.token_hex(6), tenant=tenant, sha256=hash_key(plain), created_at=utc_now()
    )
    write_keys(path, [*read_keys(path), entry])
    return plain, entry


def new_signing_secret(path: Path, tenant: str, *, replace: bool = False) -> str | None:
    """Create ``tenant``'s callback signing secret when it has none (or ``replace``);
    returns it (to show once), or None when the tenant keeps the one it has."""
    signing = dict(_read(path).get("signing_secrets", {}))
    if tenant in signing and not replace:
        return None
    signing[tenant] = "whsec_" + secrets.token_urlsafe(32)
    write_keys(path, read_keys(path), signing)
    return signing[tenant]


def revoke_key(path: Path, key_id: str) -> bool:
    keys = read_keys(path)
    kept = [key for key in keys if key.id != key_id]
    if len(kept) == len(keys):
        return False
    write_keys(path, kept)
    return True


class KeyRegistry:
    """Looks up the tenant of a presented key, in constant time per stored key."""

    def __init__(self, keys_file: str | None, bootstrap_key: str) -> None:
        self._path = Path(keys_file) if keys_file else None
        self._bootstrap_hash = hash_key(bootstrap_key) if bootstrap_key else None
        self._lock = threading.Lock()
        self._loaded_stamp: tuple[int, int] | None = None
        self._keys: list[ApiKey] = []

    def tenant_for(self, presented: str) -> str | None:
        digest = hash_key(presented)
        tenant: str | None = None
        if self._bootstrap_hash and hmac.compare_digest(digest, self._bootstrap_hash):
            tenant = DEFAULT_TENANT
        for key in self._current_keys():
            if hmac.compare_digest(digest, key.sha256):
                tenant = key.tenant
        return tenant

    def _current_keys(self) -> list[ApiKey]:
        if self._path is None:
            return []
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return []
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._loaded_stamp:
                self._keys = read_keys(self._path)
                self._loaded_stamp = stamp
            return self._keys
