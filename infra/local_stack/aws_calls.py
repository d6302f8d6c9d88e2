"""Records every AWS API call made through botocore, attributed to the template function that made it.

The IAM check (`python -m iam_check`, run by `make test` after the suites) evaluates these calls
against the transformed template's roles and resource policies. A call belongs to a function when
- it is made in a local-stack worker process (`B24_AWS_CALL_FUNCTION` names the function), or
- the function's handler (the template's `Handler`, e.g. `b24connector.handlers.leads.handler`) is on
  the calling thread's stack, or the thread was started from such a stack (thread pools the handler
  opens).
Calls made by tests themselves (provisioning, assertions) belong to no function and are not written.

Hooked with botocore's `before-parameter-build` event (the API parameters as the caller passed them),
registered through `botocore.handlers.BUILTIN_HANDLERS` so every botocore session created later (boto3's
default session, PynamoDB's, Powertools') carries it, and on boto3's default session if it exists.
Written as one JSON line per call (O_APPEND, one write each) so processes can share the file.

Used in two places: tests/conftest.py installs it in the pytest process, and worker_main.py loads this
file by path (no sys.path change, so the worker still sees only the function's code) when the stack
passed `B24_AWS_CALL_LOG` on.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

ENV_LOG = "B24_AWS_CALL_LOG"  # path of the JSONL recording; set = recording on
ENV_FUNCTION = "B24_AWS_CALL_FUNCTION"  # in a worker: the logical ID every call of the process belongs to
ENV_TEMPLATE = "B24_AWS_CALL_TEMPLATE"  # in a worker: the template that function comes from

# API parameters that name the resource or carry a condition-key value; nothing else is kept (item
# keys and bodies may hold tenant data, message bodies sealed tokens).
RESOURCE_PARAMETERS = (
    "TableName",
    "IndexName",
    "KeyId",
    "QueueUrl",
    "SecretId",
    "FunctionName",
    "LogGroupName",
    "TopicArn",
    "Name",
)
CONTEXT_PARAMETERS = ("EncryptionContext",)
# Multi-resource shapes whose resources sit inside the request; recorded by their table names.
_NESTED_TABLES = ("RequestItems",)

_state: dict[str, Any] = {}
_state_lock = threading.Lock()


def _handler_frames(handlers: Mapping[str, str]) -> dict[tuple[str, str], str]:
    frames: dict[tuple[str, str], str] = {}
    for logical_id, spec in handlers.items():
        module, _, name = spec.rpartition(".")
        if module and name:
            frames[(module, name)] = logical_id
    return frames


def _function_on_stack() -> str | None:
    """The logical ID whose handler frame is on this thread's stack (outermost wins), else inherited."""
    frames: dict[tuple[str, str], str] = _state.get("frames", {})
    found: str | None = None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        key = (frame.f_globals.get("__name__", ""), frame.f_code.co_name)
        if key in frames:
            found = frames[key]
        frame = frame.f_back
    if found is not None:
        return found
    inherited = getattr(threading.current_thread(), "_b24_aws_call_function", None)
    return inherited if isinstance(inherited, str) else None


def current_function() -> str | None:
    """The function the current call is attributed to (None: not a function's call)."""
    fixed = _state.get("function")
    return fixed if isinstance(fixed, str) else _function_on_stack()


def _env_matches(value: str) -> list[str]:
    return sorted(name for name, env_value in os.environ.items() if env_value == value and name != ENV_LOG)


def _record(params: Mapping[str, Any], model: Any, context: Mapping[str, Any] | None, **_: Any) -> None:
    function = current_function()
    if function is None:
        return
    service_model = model.service_model
    kept: dict[str, Any] = {}
    env: dict[str, list[str]] = {}
    for name in RESOURCE_PARAMETERS:
        value = params.get(name)
        if isinstance(value, str):
            kept[name] = value
            env[name] = _env_matches(value)
    for name in CONTEXT_PARAMETERS:
        if isinstance(params.get(name), Mapping):
            kept[name] = {str(k): str(v) for k, v in params[name].items()}
    # PutEvents names its bus in each entry: recorded as EventBusName when every entry names the same one.
    entries = params.get("Entries")
    if isinstance(entries, list):
        buses = {str(e.get("EventBusName", "default")) for e in entries if isinstance(e, Mapping)}
        if len(buses) == 1:
            kept["EventBusName"] = bus = buses.pop()
            env["EventBusName"] = _env_matches(bus)
    for name in _NESTED_TABLES:
        if isinstance(params.get(name), Mapping):
            tables = sorted(str(table) for table in params[name])
            kept[name] = tables
            env.update({f"{name}:{table}": _env_matches(table) for table in tables})
    line = {
        "function": function,
        "template": _state.get("template"),
        "process": "worker" if _state.get("function") else "in-process",
        "service": service_model.metadata.get("signingName") or service_model.endpoint_prefix,
        "operation": model.name,
        "region": (context or {}).get("client_region"),
        "params": kept,
        "env": env,
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0] or None,
    }
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    os.write(_state["fd"], data)


def _patch_threads() -> None:
    original = threading.Thread.start
    if getattr(original, "_b24_aws_calls", False):
        return

    def start(self: threading.Thread) -> None:
        function = _function_on_stack()
        if function is not None:
            self._b24_aws_call_function = function  # type: ignore[attr-defined]
        original(self)

    start._b24_aws_calls = True  # type: ignore[attr-defined]
    threading.Thread.start = start  # type: ignore[method-assign]


def install(
    path: str,
    *,
    template: str,
    handlers: Mapping[str, str] | None = None,
    function: str | None = None,
) -> None:
    """Record from now on into `path`: calls of `function` (a worker) or of the given handlers' stacks.

    `template` is the file the function or handlers come from: tests also run local stacks on their own
    small templates, whose calls the IAM check of template.yaml must not count.
    """
    import botocore.handlers

    with _state_lock:
        if "fd" in _state:
            return
        _state["fd"] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _state["function"] = function
        _state["template"] = str(Path(template).resolve()) if template else None
        _state["frames"] = _handler_frames(handlers or {})
        botocore.handlers.BUILTIN_HANDLERS.append(("before-parameter-build", _record))
        boto3 = sys.modules.get("boto3")
        default_session = getattr(boto3, "DEFAULT_SESSION", None) if boto3 is not None else None
        if default_session is not None:
            default_session._session.register("before-parameter-build", _record)
        if function is None:
            _patch_threads()


def install_from_environment() -> bool:
    """In a worker: start recording when the stack passed B24_AWS_CALL_LOG and the function's name."""
    path = os.environ.get(ENV_LOG)
    function = os.environ.get(ENV_FUNCTION)
    if not path or not function:
        return False
    install(path, template=os.environ.get(ENV_TEMPLATE, ""), function=function)
    return True
