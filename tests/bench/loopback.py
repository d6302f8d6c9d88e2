"""A threaded WSGI server on an ephemeral loopback port that forwards to an upstream over one pooled
session: the shared shell of the bench's DynamoDB proxy and OAuth facade."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from tests.support.servers import ServedInThread


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class LoopbackForwarder(ServedInThread):
    """Serves `_app` from a daemon thread; `_http` is the pooled session towards the upstream."""

    def __init__(self, name: str, *, pool_connections: int) -> None:
        self._http = requests.Session()
        self._http.trust_env = False
        self._http.mount(
            "http://", HTTPAdapter(pool_connections=pool_connections, pool_maxsize=64, max_retries=0)
        )
        server: BaseWSGIServer = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_Quiet)
        server.socket.listen(128)
        super().__init__(server, name)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"
