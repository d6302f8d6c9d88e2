"""A directly invoked function: echoes, fails, sleeps or exits on request."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

STATE = {"invocations": 0}


class LeadsUnavailableError(Exception):
    """A domain error, so the error type is ours and not a builtin."""


def handler(event: dict[str, Any], context: Any) -> Any:
    """Do what the event says."""
    STATE["invocations"] += 1
    if event.get("raise"):
        raise LeadsUnavailableError(event["raise"])
    if event.get("sleep"):
        time.sleep(float(event["sleep"]))
    if event.get("exit"):
        sys.exit(int(event["exit"]))
    if event.get("big"):
        return "x" * int(event["big"])
    if event.get("print"):
        print(event["print"])
    return {
        "echo": event,
        "function_name": context.function_name,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "pid": os.getpid(),
        "invocations": STATE["invocations"],
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "sys_path": sys.path,
    }
