"""Warm worker processes per function, like Lambda execution environments, and the invoke results."""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from local_stack import aws_calls

_log = logging.getLogger("local_stack.runtime")

WORKER_SCRIPT = Path(__file__).with_name("worker_main.py")
# Lambda's documented quotas: 6 MB each way for synchronous calls. The response figure is the one
# Lambda prints in its Function.ResponseSizeTooLarge message.
SYNC_REQUEST_LIMIT_BYTES = 6 * 1024 * 1024
SYNC_RESPONSE_LIMIT_BYTES = 6_291_556
ASYNC_REQUEST_LIMIT_BYTES = 1024 * 1024
_STOP_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """What a worker needs to run one template function."""

    logical_id: str
    handler: str
    code_dir: Path
    timeout_seconds: float
    memory_mb: int
    environment: Mapping[str, str]
    arn: str
    template: str = ""  # the template file it comes from (the IAM check evaluates calls against it)


@dataclass(slots=True)
class InvocationResult:
    """One invocation's outcome in the Lambda Invoke API's terms."""

    request_id: str
    payload: bytes  # the JSON the caller receives (result, or the error document)
    function_error: str | None = None  # "Unhandled" when the function failed, as X-Amz-Function-Error
    log_tail: str = ""
    duration_ms: float = 0.0

    def json(self) -> Any:
        """The payload decoded."""
        return json.loads(self.payload) if self.payload else None


class _Worker:
    """One process running one handler; serves one invocation at a time."""

    _ids = itertools.count(1)

    def __init__(self, spec: FunctionSpec, python: str) -> None:
        self.spec = spec
        self.number = next(self._ids)
        env = dict(spec.environment)
        env["PYTHONPATH"] = str(spec.code_dir)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        stream = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[$LATEST]{uuid.uuid4().hex}"
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = stream
        # The IAM check's recording (make test): the worker records its calls as this function's.
        if recording := os.environ.get(aws_calls.ENV_LOG):
            env[aws_calls.ENV_LOG] = recording
            env[aws_calls.ENV_FUNCTION] = spec.logical_id
            env[aws_calls.ENV_TEMPLATE] = spec.template
        self.process = subprocess.Popen(
            [python, "-P", str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=spec.code_dir,
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        if self.process.stdin is None or self.process.stdout is None:
            raise RuntimeError("the worker process has no pipes")
        self._stdin: IO[str] = self.process.stdin
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name=f"{spec.logical_id}-reader", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._replies.put(line)
        finally:
            self._replies.put(None)
            stream.close()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send one request; the reply, or None on timeout or when the process died."""
        try:
            self._stdin.write(json.dumps(request) + "\n")
            self._stdin.flush()
        except (OSError, ValueError):
            return {"request_id": request["request_id"], "ok": False, "fatal": True, "error": {}}
        try:
            line = self._replies.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if line is None:
            return {"request_id": request["request_id"], "ok": False, "fatal": True, "error": {}}
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _close_stdin(self) -> None:
        try:
            if not self._stdin.closed:
                self._stdin.close()
        except OSError:
            pass  # the process is gone already; nothing left to flush to

    def stop(self, *, kill: bool = False) -> None:
        """Close stdin (a clean exit) or kill; always reap."""
        if kill:
            self.process.kill()
        self._close_stdin()
        try:
            self.process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=_STOP_GRACE_SECONDS)


@dataclass
class FunctionRuntime:
    """A bounded pool of warm workers for one function (concurrent invocations get their own worker)."""

    spec: FunctionSpec
    max_workers: int = 4
    python: str = sys.executable
    _idle: list[_Worker] = field(default_factory=list)
    _all: set[_Worker] = field(default_factory=set)
    _count: int = 0
    _closed: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError(f"{self.spec.logical_id} is shut down")
                if self._idle:
                    return self._idle.pop()
                if self._count < self.max_workers:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            worker = _Worker(self.spec, self.python)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
        return worker

    def _release(self, worker: _Worker, *, discard: bool) -> None:
        with self._cond:
            keep = not discard and worker.alive and not self._closed
            if keep:
                self._idle.append(worker)
            else:
                self._count -= 1
                self._all.discard(worker)
            self._cond.notify()
        if not keep:
            worker.stop(kill=discard)

    def prewarm(self) -> None:
        """Start one worker now so the first call does not pay the process start."""
        self._release(self._acquire(), discard=False)

    def invoke(
        self,
        payload: Any,
        *,
        request_id: str | None = None,
        client_context: Any = None,
        want_log: bool = False,
        invoked_arn: str | None = None,
    ) -> InvocationResult:
        """Run the handler on one decoded event; never raises for function failures."""
        request_id = request_id or str(uuid.uuid4())
        started = time.monotonic()
        worker = self._acquire()
        deadline_ms = int(time.time() * 1000 + self.spec.timeout_seconds * 1000)
        request = {
            "request_id": request_id,
            "payload": payload,
            "deadline_ms": deadline_ms,
            "invoked_function_arn": invoked_arn or self.spec.arn,
            "client_context": client_context,
            "want_log": want_log,
        }
        reply = worker.call(request, self.spec.timeout_seconds)
        elapsed = time.monotonic() - started
        if reply is None:
            self._release(worker, discard=True)
            message = (
                f"RequestId: {request_id} Error: Task timed out after {self.spec.timeout_seconds:.2f} seconds"
            )
            return self._failure(
                request_id, {"errorType": "Sandbox.Timedout", "errorMessage": message}, elapsed
            )
        fatal = bool(reply.get("fatal"))
        if fatal and "errorType" not in reply.get("error", {}):
            try:
                status = worker.process.wait(timeout=_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                status = reply.get("error", {}).get("exit_status", 1)
            self._release(worker, discard=True)
            message = f"RequestId: {request_id} Error: Runtime exited with error: exit status {status}"
            return self._failure(
                request_id, {"errorType": "Runtime.ExitError", "errorMessage": message}, elapsed
            )
        self._release(worker, discard=fatal)
        log = str(reply.get("log") or "")
        if not reply.get("ok"):
            return self._failure(request_id, reply["error"], elapsed, log)
        body = str(reply["result"]).encode()
        if len(body) > SYNC_RESPONSE_LIMIT_BYTES:
            message = f"Response payload size exceeded maximum allowed payload size ({SYNC_RESPONSE_LIMIT_BYTES} bytes)."
            error = {"errorMessage": message, "errorType": "Function.ResponseSizeTooLarge"}
            return self._failure(request_id, error, elapsed, log)
        return InvocationResult(request_id, body, None, log, elapsed * 1000)

    @staticmethod
    def _failure(request_id: str, error: dict[str, Any], elapsed: float, log: str = "") -> InvocationResult:
        _log.info("invocation %s failed: %s", request_id, error.get("errorType"))
        return InvocationResult(request_id, json.dumps(error).encode(), "Unhandled", log, elapsed * 1000)

    def close(self) -> None:
        """Stop every worker: idle ones cleanly, busy ones killed (their callers get an error)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = self._all - set(idle)
            self._all.clear()
            self._count -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.stop()
        for worker in busy:
            worker.stop(kill=True)

    @property
    def worker_count(self) -> int:
        """Workers alive now (busy or idle)."""
        with self._cond:
            return self._count
