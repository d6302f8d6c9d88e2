"""Hostile helpers for the attack tests: a listener nothing may reach, an OAuth server that answers what
the test scripts, and a port nothing listens on."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from bitrix24_emulator.wsgi import QuietRequestHandler


class CatchAll:
    """A loopback listener that records every connection and request line; nothing should reach it."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer._lock:
                    outer.connections += 1
                self.request.settimeout(1.0)
                try:
                    data = self.request.recv(4096)
                except OSError:
                    data = b""
                with outer._lock:
                    outer.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                with contextlib.suppress(OSError):
                    self.request.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                    )

        class _Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="catch-all", daemon=True)

    @property
    def host(self) -> str:
        """host:port of the listener."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> CatchAll:
        """Start listening."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def hits(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self.connections


@dataclass
class CraftedOAuthServer:
    """An allow-listed OAuth server that answers whatever the test scripts (a compromised or buggy one)."""

    token_answer: dict[str, Any] = field(default_factory=dict)
    app_info_answer: dict[str, Any] = field(default_factory=dict)
    token_requests: int = 0
    app_info_requests: int = 0
    _server: BaseWSGIServer | None = None
    _thread: threading.Thread | None = None

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/oauth/token/":
            self.token_requests += 1
            body = self.token_answer
        elif request.path == "/rest/app.info":
            self.app_info_requests += 1
            body = self.app_info_answer
        else:
            return Response("{}", status=404, content_type="application/json")(environ, start_response)
        return Response(json.dumps(body), content_type="application/json")(environ, start_response)

    def start(self) -> CraftedOAuthServer:
        """Listen on an ephemeral loopback port."""
        self._server = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=QuietRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="crafted-oauth", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """Base URL (http://127.0.0.1:port)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def host(self) -> str:
        """host:port."""
        return self.url.removeprefix("http://")

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
