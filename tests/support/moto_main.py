"""moto's server for tests, in its own process: prints {"port": N}, runs until stdin closes.

Unlike local_stack.moto_process, DynamoDB requests can be serialised (`--serialize-dynamodb`): moto
evaluates a ConditionExpression and applies the write in separate Python steps, so two threads of its
threaded server can both pass the same condition (measured: 2 of 40 rounds of 50 simultaneous
conditional lease writes had two winners). Real DynamoDB applies conditional writes atomically per
item; one lock around DynamoDB calls restores that guarantee without slowing the other services (an
SQS long poll must not hold it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serialize_dynamodb(app: WsgiApp) -> WsgiApp:
    """Run DynamoDB API calls (X-Amz-Target DynamoDB_*) one at a time; everything else in parallel."""
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))  # the body is produced under the lock too

    return serialized


def main(argv: list[str] | None = None) -> int:
    """Serve until stdin closes or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.moto_main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--serialize-dynamodb", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app: WsgiApp = DomainDispatcherApplication(create_backend_app)
    if args.serialize_dynamodb:
        app = serialize_dynamodb(app)
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler)
    port = server.server_address[1]
    os.environ["MOTO_PORT"] = str(port)  # moto builds some self-referencing URLs from it
    threading.Thread(target=server.serve_forever, name="moto", daemon=True).start()
    print(json.dumps({"host": "127.0.0.1", "port": port}), flush=True)
    sys.stdin.buffer.read()  # EOF: the test process closed the pipe or is gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
