"""The moto server in its own process: binds, prints its port as one JSON line, runs until stdin closes.

This is moto's own server (the WSGI app ``python -m moto.server`` runs); wrapping it lets port 0
work (the bound port is reported back) and ties its lifetime to the stack's: when the parent exits
for any reason, stdin reaches EOF and this process ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the moto server until stdin closes or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m local_stack.moto_process")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--access-log", action="store_true", help="log every request (noisy)")
    args = parser.parse_args(argv)
    # The stack decides when we stop; a terminal's Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    import threading

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

    try:
        server = make_server(
            args.host,
            args.port,
            DomainDispatcherApplication(create_backend_app),
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
