"""Job callbacks: which URLs may be called, and with which tenant's signing secret.

A callback URL is given by a client (``callback_url`` on an upload) or by an operator
(``inspectq callbacks add``), and the service then POSTs to it from inside the factory's
network. So only http and https are accepted, and a host that is or resolves to a
loopback, link-local, private, multicast or reserved address is refused (it would let a
client reach internal services), unless ``INSPECTQ_CALLBACK_ALLOW_PRIVATE=true`` for local
development. The sender checks again before each attempt, so a DNS answer that changes
after the check (rebinding) cannot get through either.

Each tenant signs with its own secret (``X-Inspectq-Signature``, see
``inspectq.signing``): ``inspectq keys add`` creates it with the tenant's first key and
shows it once; the keys file holds it (owner-only). The bootstrap tenant ``default`` signs
with ``INSPECTQ_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from inspectq.config import Settings

MAX_URL_CHARS = 2048
BOOTSTRAP_TENANT = "default"


class CallbackUrlError(ValueError):
    """The URL may not be called back; the message says why."""


def check_callback_url(url: str, allow_private: bool) -> str:
    """``url`` when it may be called, else CallbackUrlError (see the module docstring)."""
    if len(url) > MAX_URL_CHARS:
        raise CallbackUrlError(f"longer than {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise CallbackUrlError("only http and https URLs are called back")
    if not parts.hostname:
        raise CallbackUrlError("the URL has no host")
    if parts.username or parts.password:
        raise CallbackUrlError("credentials in the URL are not accepted; use the signature")
    if allow_private:
        return url
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as error:
        raise CallbackUrlError(f"the host {parts.hostname!r} does not resolve") from error
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise CallbackUrlError(
                f"the host {parts.hostname!r} is a loopback, link-local or private address "
                f"({address}); such callbacks are refused")
    return url


class SigningSecrets:
    """Each tenant's signing secret: the keys file's ``signing_secrets`` (re-read when the
    file changes), the bootstrap tenant's from the settings."""

    def __init__(self, settings: Settings) -> None:
        self._path = Path(settings.api_keys_file) if settings.api_keys_file else None
        self._bootstrap = settings.webhook_secret.get_secret_value()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._secrets: dict[str, str] = {}

    def of(self, tenant: str) -> str | None:
        stored = self._stored().get(tenant)
        if stored is None and tenant == BOOTSTRAP_TENANT:
            return self._bootstrap or None
        return stored

    def _stored(self) -> dict[str, str]:
        if self._path is None:
            return {}
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return {}
        with self._lock:
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                data = json.loads(self._path.read_text())
                self._secrets = dict(data.get("signing_secrets", {}))
                self._stamp = (stat.st_mtime_ns, stat.st_size)
            return self._secrets
