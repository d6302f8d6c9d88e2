"""Expected failures of the use cases: a stable reason code plus a message safe to show a caller."""

from __future__ import annotations

import traceback
from enum import Enum
from typing import Any


class ProblemKind(Enum):
    """What went wrong, in terms a transport (HTTP page, Lambda answer) can map without guessing."""

    INVALID = "invalid"  # the caller's input is malformed or fails a check; nothing was changed
    FORBIDDEN = "forbidden"  # the caller could not prove it may do this; nothing was changed
    NOT_FOUND = "not_found"
    UPSTREAM_REJECTED = "upstream_rejected"  # Bitrix24 answered, but not in a way we can use
    UNAVAILABLE = "unavailable"  # Bitrix24 or AWS failed transiently; worth trying again later


class Problem(Exception):
    """An expected, already-explained failure. `message` must never carry a token or secret."""

    def __init__(self, kind: ProblemKind, reason: str, message: str) -> None:
        self.kind = kind
        self.reason = reason
        self.message = message
        super().__init__(f"{kind.value}: {reason}: {message}")


def invalid(reason: str, message: str) -> Problem:
    """The caller's input is malformed or contradicts what we know."""
    return Problem(ProblemKind.INVALID, reason, message)


def forbidden(reason: str, message: str) -> Problem:
    """The caller could not prove it may do this."""
    return Problem(ProblemKind.FORBIDDEN, reason, message)


def unavailable(reason: str, message: str) -> Problem:
    """A dependency failed in a way worth retrying later."""
    return Problem(ProblemKind.UNAVAILABLE, reason, message)


def upstream_rejected(reason: str, message: str) -> Problem:
    """Bitrix24 answered with something we cannot use."""
    return Problem(ProblemKind.UPSTREAM_REJECTED, reason, message)


def safe_traceback(exc: BaseException) -> dict[str, Any]:
    """Where an unexpected error came from: types and code locations only, never messages or values."""
    chain: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:
        chain.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    frames = [
        f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}:{f.name}"
        for f in traceback.extract_tb(exc.__traceback__)
    ]
    return {"error_types": chain, "frames": frames[-12:]}
