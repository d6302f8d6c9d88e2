"""A Lambda-like runtime process: imports one handler, then serves invocations over its stdin/stdout.

Run as a script with ``python -P`` (so neither this directory nor infra/ lands on sys.path) and with
PYTHONPATH set to the function's CodeUri, the way /var/task is the only code on a Lambda's path. It
imports only the standard library, so what the handler sees is the function's own code and packages.

Protocol (one JSON object per line):
  parent -> worker (stdin):  {"request_id", "payload", "deadline_ms", "invoked_function_arn",
                               "client_context", "want_log"}
  worker -> parent (the original stdout, kept private): {"request_id", "ok", "result" | "error",
                               "log", "fatal"}
The handler's own stdout/stderr go to the console (fd 2), each line prefixed with the function name,
as CloudWatch keeps one log per function. A worker that reports ``fatal`` exits afterwards, as Lambda
discards an execution environment whose init failed or whose runtime exited.
"""

from __future__ import annotations

import decimal
import importlib
import importlib.util
import io
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, TextIO

LOG_TAIL_BYTES = 4096


class _PrefixedConsole(io.TextIOBase):
    """Writes whole lines to fd 2 with a prefix and remembers the invocation's output for LogType=Tail."""

    def __init__(self, prefix: str, sink: TextIO) -> None:
        self._prefix = prefix
        self._sink = sink
        self._pending = ""
        self._lock = threading.Lock()
        self.captured: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.captured.append(text)
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._sink.write(f"{self._prefix}{line}\n")
            self._sink.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._sink.write(f"{self._prefix}{self._pending}\n")
                self._pending = ""
            self._sink.flush()

    def take(self) -> str:
        self.flush()
        with self._lock:
            text = "".join(self.captured)
            self.captured.clear()
        return text


class LambdaContext:
    """The attributes and method of the Python runtime's context object."""

    def __init__(self, request: dict[str, Any]) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = str(request.get("invoked_function_arn", ""))
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = str(request["request_id"])
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = request.get("client_context")
        self.tenant_id = None
        self._deadline_ms = int(request["deadline_ms"])

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's Timeout, as Lambda reports it."""
        return max(self._deadline_ms - int(time.time() * 1000), 0)


def _lambda_json_default(value: object) -> object:
    # The Lambda Python runtime serialises Decimal (as DynamoDB returns numbers) instead of failing.
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return math.nan
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _error(exc: BaseException, *, with_trace: bool = True) -> dict[str, Any]:
    # Lambda lists the frames below the runtime, i.e. the handler's own; ours start with this module.
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__]
    answer: dict[str, Any] = {"errorMessage": str(exc), "errorType": type(exc).__name__}
    if with_trace:
        answer["stackTrace"] = traceback.format_list(frames)
    return answer


def _load_handler(spec: str) -> tuple[Any, dict[str, Any] | None]:
    module_name, _, function_name = spec.rpartition(".")
    if not module_name:
        message = f"Bad handler '{spec}': not enough values to unpack (expected 2, got 1)"
        return None, {"errorMessage": message, "errorType": "Runtime.MalformedHandlerName", "stackTrace": []}
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        message = f"Unable to import module '{module_name}': {exc}"
        return None, {"errorMessage": message, "errorType": "Runtime.ImportModuleError", "stackTrace": []}
    except Exception as exc:  # an init-phase failure is answered on the invocation, as Lambda does
        return None, _error(exc)
    handler = getattr(module, function_name, None)
    if handler is None:
        message = f"Handler '{function_name}' missing on module '{module_name}'"
        return None, {"errorMessage": message, "errorType": "Runtime.HandlerNotFound", "stackTrace": []}
    return handler, None


def _start_aws_call_recording() -> None:
    # The IAM check's recording (aws_calls.py, loaded by path so nothing joins sys.path): before the
    # handler's import, so its init-phase calls are recorded too.
    if not os.environ.get("B24_AWS_CALL_LOG"):
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aws_calls.py")
    spec = importlib.util.spec_from_file_location("_local_stack_aws_calls", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install_from_environment()


def main() -> int:
    """Serve invocations until stdin closes."""
    # The stack decides when we stop (stdin EOF); a terminal's Ctrl-C goes to the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # anything written straight to fd 1 must not corrupt the protocol
    requests = sys.stdin
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    prefix = f"[{os.environ.get('AWS_LAMBDA_FUNCTION_NAME', 'function')}] "
    console = _PrefixedConsole(prefix, sys.__stderr__ or sys.stderr)
    sys.stdout = console
    sys.stderr = console

    _start_aws_call_recording()
    handler, init_error = _load_handler(os.environ.get("_HANDLER", ""))
    init_log = console.take()

    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        reply: dict[str, Any] = {"request_id": request["request_id"]}
        if init_error is not None:
            reply.update(ok=False, error={**init_error, "requestId": request["request_id"]}, fatal=True)
            reply["log"] = init_log[-LOG_TAIL_BYTES:] if request.get("want_log") else ""
            channel.write(json.dumps(reply) + "\n")
            return 1
        try:
            result = handler(request["payload"], LambdaContext(request))
        except SystemExit as exc:
            exit_status = exc.code if isinstance(exc.code, int) else 1
            reply.update(ok=False, fatal=True, error={"exit_status": exit_status})
        except Exception as exc:
            error = _error(exc)
            # What the Python runtime writes to the function's log for an unhandled error.
            console.write(f"[ERROR] {error['errorType']}: {error['errorMessage']}\n")
            console.write("Traceback (most recent call last):\n" + "".join(error["stackTrace"]))
            reply.update(ok=False, error={**error, "requestId": request["request_id"]})
        else:
            try:
                reply.update(ok=True, result=json.dumps(result, default=_lambda_json_default))
            except (TypeError, ValueError) as exc:
                message = f"Unable to marshal response: {exc}"
                reply.update(ok=False, error={"errorMessage": message, "errorType": "Runtime.MarshalError"})
        log = console.take()
        reply["log"] = (init_log + log)[-LOG_TAIL_BYTES:] if request.get("want_log") else ""
        init_log = ""
        channel.write(json.dumps(reply) + "\n")
        if reply.get("fatal"):
            return int(reply["error"].get("exit_status", 1))
    return 0


if __name__ == "__main__":
    status = main()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # Lambda freezes or kills an environment, it never waits for the handler's threads and pools to
    # wind down; neither does the stack when it stops (a clean interpreter exit took seconds).
    os._exit(status)
