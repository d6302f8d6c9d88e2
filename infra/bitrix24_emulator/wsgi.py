"""Small WSGI helpers shared by the portal and the OAuth server, and the quiet threaded server."""

from __future__ import annotations

import json
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from bitrix24_emulator.phpquery import parse_pairs


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer the way Bitrix24 sends it (UTF-8, not ASCII-escaped)."""
    return Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        content_type="application/json; charset=utf-8",
        headers=headers,
    )


def html_response(html: str, status: int = 200) -> Response:
    """An HTML page."""
    return Response(html, status=status, mimetype="text/html")


def request_params(request: Request, *, accept_json: bool) -> dict[str, Any]:
    """Query plus body parameters (the body wins), PHP bracket keys nested; JSON bodies when allowed."""
    params = parse_pairs(request.args.items(multi=True))
    if request.method != "POST":
        return params
    if request.mimetype == "application/json":
        if not accept_json:
            return params
        try:
            body = json.loads(request.get_data(as_text=True) or "{}")
        except ValueError:
            return params  # an unreadable body carries no parameters (so no `auth` either)
        if isinstance(body, dict):
            params.update(body)
        return params
    params.update(parse_pairs(request.form.items(multi=True)))
    return params


class QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's handler without access-log lines: their URLs can carry `?auth=<token>`."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Access lines are suppressed on purpose."""


class ServerThread:
    """A threaded werkzeug server running in a daemon thread."""

    def __init__(self, host: str, port: int, app: Any, name: str) -> None:
        self.server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=QuietRequestHandler
        )
        # Enough room for bursts of parallel clients on the listening socket.
        self.server.socket.listen(128)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, name=name, daemon=True
        )

    def start(self) -> None:
        """Begin serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
