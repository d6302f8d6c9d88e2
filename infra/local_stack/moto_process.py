"""The moto server in its own process: binds, prints its port as one JSON line, runs until stdin closes.

This is moto's own server (the WSGI app ``python -m moto.server`` runs); wrapping it lets port 0
work (the bound port is reported back) and ties its lifetime to the stack's: when the parent exits
for any reason, stdin reaches EOF and this process ends.

DynamoDB calls are serialised by default: moto evaluates a ConditionExpression and applies the write in
separate Python steps, so two threads of its threaded server can both pass the same condition
(measured: 2 to 7 of 40 rounds of 50 simultaneous conditional lease writes had two winners). Real
DynamoDB applies conditional writes atomically per item; one lock around DynamoDB calls restores that
guarantee without slowing the other services (an SQS long poll must not hold it). `--raw-dynamodb`
runs moto exactly as shipped.
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
# Wrappers applied around moto's app, innermost first (the deploy rehearsal adds its own).
EXTRA_MIDDLEWARE: list[Callable[[WsgiApp], WsgiApp]] = []


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
    """Run the moto server until stdin closes or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m local_stack.moto_process")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--access-log", action="store_true", help="log every request (noisy)")
    parser.add_argument(
        "--raw-dynamodb", action="store_true", help="moto as shipped: conditional writes not atomic"
    )
    args = parser.parse_args(argv)
    # The stack decides when we stop; a terminal's Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if args.access_log:
                super().log_request(code, size)

    app: WsgiApp = DomainDispatcherApplication(create_backend_app)
    if not args.raw_dynamodb:
        app = serialize_dynamodb(app)
    for wrap in EXTRA_MIDDLEWARE:
        app = wrap(app)
    try:
        server = make_server(
            args.host,
            args.port,
            app,
            threaded=True,
            request_handler=QuietHandler,
        )
    except OSError as exc:
        print(json.dumps({"error": str(exc.strerror or exc)}), flush=True)
        return 1
    port = server.server_address[1]
    os.environ["MOTO_PORT"] = str(port)  # moto builds some self-referencing URLs from it
    threading.Thread(target=server.serve_forever, name="moto", daemon=True).start()
    print(json.dumps({"host": args.host, "port": port}), flush=True)
    sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or is gone
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    # The state is in memory and goes with the process; skipping interpreter teardown saves seconds.
    os._exit(status)
