"""Scripted faults: a queue of {target, method?, kind, count, ...} consumed in order by matching requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

REST_KINDS = frozenset(
    {
        "server_error",  # 5xx with a JSON INTERNAL_SERVER_ERROR body
        "html",  # an HTML error page instead of JSON (what proxies and limits sometimes send)
        "slow",  # sleep `delay` seconds, then answer normally
        "query_limit",  # 503 QUERY_LIMIT_EXCEEDED although the bucket has room
        "operation_time_limit",  # 429 OPERATION_TIME_LIMIT for `delay` seconds from now
        "expired_token",  # 401 expired_token although the token is live
        "invalid_token",  # 401 invalid_token
        "overload",  # 503 OVERLOAD_LIMIT (manual block)
        "portal_deleted",  # PORTAL_DELETED with the configured status
        "error",  # any status/error/description given in the fault
    }
)
OAUTH_KINDS = frozenset(
    {
        "server_error",  # 5xx (JSON body)
        "html",  # 5xx (HTML body)
        "slow",  # sleep `delay` seconds, then answer normally
        "timeout_after_issue",  # issue the tokens, then sleep `delay` seconds before answering
        "error",  # any status/error/description given in the fault
    }
)
_DEFAULT_STATUS = {"server_error": 500, "html": 503, "error": 400}
_DEFAULT_DELAY = {"slow": 2.0, "timeout_after_issue": 5.0, "operation_time_limit": 60.0}


@dataclass
class Fault:
    """One scripted fault; `count` answers are affected, then it is gone."""

    target: str
    kind: str
    method: str | None = None
    count: int = 1
    status: int | None = None
    delay: float = 0.0
    error: str | None = None
    error_description: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        """Validate one admin-API fault object. Raises ValueError."""
        if not isinstance(raw, dict):
            raise ValueError("each fault must be an object")
        allowed = {"target", "kind", "method", "count", "status", "delay", "error", "error_description"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        target = raw.get("target")
        kind = raw.get("kind")
        kinds = {"rest": REST_KINDS, "oauth": OAUTH_KINDS}.get(str(target))
        if kinds is None:
            raise ValueError("target must be 'rest' or 'oauth'")
        if kind not in kinds:
            raise ValueError(f"kind for target {target} must be one of {', '.join(sorted(kinds))}")
        count = raw.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be a positive integer")
        status = raw.get("status", _DEFAULT_STATUS.get(kind))
        if status is not None and (
            isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
        ):
            raise ValueError("status must be an HTTP status code")
        if kind == "server_error" and status is not None and status < 500:
            raise ValueError("server_error needs a 5xx status")
        delay = raw.get("delay", _DEFAULT_DELAY.get(kind, 0.0))
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError("delay must be a non-negative number of seconds")
        method = raw.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("method must be a string")
        if kind == "error" and not raw.get("error"):
            raise ValueError("kind 'error' needs an 'error' code")
        return cls(
            target=str(target),
            kind=str(kind),
            method=method.lower().removesuffix(".json") if method else None,
            count=count,
            status=status,
            delay=float(delay),
            error=raw.get("error"),
            error_description=raw.get("error_description"),
        )


class FaultQueue:
    """Faults in the order they were scripted; the first one that matches a request is consumed."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self.injected = 0

    def add(self, faults: list[Fault]) -> None:
        """Append faults at the end of the queue."""
        self._faults.extend(faults)

    def clear(self) -> None:
        """Drop every pending fault."""
        self._faults.clear()

    def take(self, target: str, method: str) -> Fault | None:
        """Consume one use of the first fault for this target whose method is unset or equal."""
        for fault in self._faults:
            if fault.target == target and (fault.method is None or fault.method == method):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                self.injected += 1
                return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        """The queue as JSON."""
        return [asdict(f) for f in self._faults]
