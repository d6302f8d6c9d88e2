"""Hostile helpers for the attack tests: a listener nothing may reach, an OAuth server that answers what
the test scripts, and a port nothing listens on."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bitrix24_emulator.wsgi import QuietRequestHandler
from tests.support.servers import ServedInThread


class CatchAll(ServedInThread):
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

        super().__init__(_Server(("127.0.0.1", 0), _Handler), "catch-all")

    @property
    def host(self) -> str:
        """host:port of the listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def hits(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self.connections


class CraftedOAuthServer(ServedInThread):
    """An allow-listed OAuth server that answers whatever the test scripts (a compromised or buggy one)."""

    def __init__(self) -> None:
        self.token_answer: dict[str, Any] = {}
        self.app_info_answer: dict[str, Any] = {}
        self.token_requests = 0
        self.app_info_requests = 0
        server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=QuietRequestHandler)
        super().__init__(server, "crafted-oauth")

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

    @property
    def url(self) -> str:
        """Base URL (http://127.0.0.1:port)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """host:port."""
        return self.url.removeprefix("http://")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
