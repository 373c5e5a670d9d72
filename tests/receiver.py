"""A local HTTP receiver for callbacks and webhooks: records every POST, answers with the
statuses a test scripts (``fail_next``), can be stopped and started again on its port."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devstack.ports import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    #: Statuses to answer next, in order (then 200).
    fail_next: list[int] = field(default_factory=list)
    #: Called as each request arrives, before it is answered (a test's fault injection).
    on_request: Callable[[], None] | None = None
    attempts: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.attempts += 1
                if receiver.on_request is not None:
                    receiver.on_request()
                status = receiver.fail_next.pop(0) if receiver.fail_next else 200
                if status == 200:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
