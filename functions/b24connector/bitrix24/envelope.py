"""REST envelopes (docs/bitrix24-facts.md#f-rest-1, #f-batch-1) and the error taxonomy of docs/bitrix24-errors.md, as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from b24connector.bitrix24.errors import (
    RAW_CODE_CHARS,
    RAW_DESCRIPTION_CHARS,
    AccessDenied,
    AuthServerUnavailable,
    BadRequest,
    ExpiredToken,
    InvalidToken,
    MethodConfirmWaiting,
    MethodNotFound,
    OperationTimeLimit,
    OverloadLimit,
    PortalDeleted,
    QueryLimitExceeded,
    RestError,
    ServerError,
    TransientError,
    UnknownAuthError,
    redact,
)
from b24connector.numbers import MAX_SAFE_INTEGER, ascii_int

# Upper-cased codes; Bitrix24 mixes `expired_token` and `NO_AUTH_FOUND`. Every code, its status, class
# and what a LeadsFunction caller gets is tabled in docs/bitrix24-errors.md; a unit test parses that
# table and compares it with this map, so the two cannot drift apart.
_CODES: dict[str, type[RestError]] = {
    "EXPIRED_TOKEN": ExpiredToken,
    # Dead grant: the token, the app's installation or the grant's user is gone (adopt a newer stored
    # pair once, else re-authorization).
    "INVALID_TOKEN": InvalidToken,
    "NO_AUTH_FOUND": InvalidToken,
    "ERROR_OAUTH": InvalidToken,
    "APPLICATION_NOT_FOUND": InvalidToken,
    "AUTHORIZATION_ERROR": InvalidToken,
    "USER_ACCESS_ERROR": InvalidToken,
    # The portal's own token check with the OAuth server failed: transient, never a dead grant.
    "CONNECTION_ERROR": AuthServerUnavailable,
    "METHOD_CONFIRM_WAITING": MethodConfirmWaiting,
    "INSUFFICIENT_SCOPE": AccessDenied,
    "ACCESS_DENIED": AccessDenied,
    "INVALID_CREDENTIALS": AccessDenied,
    "ERROR_METHOD_NOT_FOUND": MethodNotFound,
    "INVALID_REQUEST": BadRequest,
    "ERROR_BATCH_LENGTH_EXCEEDED": BadRequest,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": BadRequest,
    "OPERATION_TIME_LIMIT": OperationTimeLimit,
    "QUERY_LIMIT_EXCEEDED": QueryLimitExceeded,
    "OVERLOAD_LIMIT": OverloadLimit,
    "INTERNAL_SERVER_ERROR": ServerError,
    "ERROR_UNEXPECTED_ANSWER": ServerError,
    "PORTAL_DELETED": PortalDeleted,
}


def known_codes() -> Mapping[str, type[RestError]]:
    """Every error code classified by name (upper-cased) and its exception class; read-only."""
    return MappingProxyType(_CODES)


# What an unknown or empty code means, by HTTP status.
_BY_STATUS: dict[int, type[RestError]] = {
    # An unknown 401 is no evidence that the grant is dead (docs/bitrix24-errors.md, "Unknown codes").
    401: UnknownAuthError,
    403: AccessDenied,
    404: MethodNotFound,
    400: BadRequest,
    405: BadRequest,
    410: PortalDeleted,
    429: OperationTimeLimit,
    503: ServerError,
}


@dataclass(frozen=True, slots=True)
class RestResponse:
    """A successful REST answer: `result` plus the list-paging and timing fields when present."""

    result: Any
    next: int | None = None
    total: int | None = None
    time: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A parsed `batch` answer; every container is a dict keyed by command id, whatever PHP serialized."""

    results: dict[str, Any]
    errors: dict[str, RestError]
    totals: dict[str, int]
    nexts: dict[str, int]
    times: dict[str, Mapping[str, Any]]
    time: Mapping[str, Any] = field(default_factory=dict)


def reset_at_of(time_block: object) -> float | None:
    """`operating_reset_at` (Unix time) of a `time` block, if it carries one."""
    if isinstance(time_block, Mapping):
        value = time_block.get("operating_reset_at")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _error_fields(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, description) when `data` is an error envelope, classic or REST v3; else None."""
    if "error" not in data:
        return None
    raw = data["error"]
    if isinstance(raw, Mapping):  # REST v3: {"error": {"code": ..., "message": ...}}
        return _cut(raw.get("code") or "", RAW_CODE_CHARS), _cut(
            raw.get("message") or "", RAW_DESCRIPTION_CHARS
        )
    description = data.get("error_description")
    code = "" if raw is None else _cut(raw, RAW_CODE_CHARS)
    if not code and not description:
        return None
    return code, "" if description is None else _cut(description, RAW_DESCRIPTION_CHARS)


def _cut(value: object, limit: int) -> str:
    """str(value), cut to `limit` characters before anything else looks at it (a code may be 7 MB)."""
    text = value if isinstance(value, str) else str(value)[: limit * 4]
    return text[:limit]


def make_error(code: str, description: str, status: int | None, time_block: object = None) -> RestError:
    """The typed exception for an error code, falling back on the HTTP status for empty/unknown codes."""
    error_class = _CODES.get(code.upper())
    if error_class is None and not code and description.strip().rstrip(".").lower() == "access denied":
        error_class = (
            AccessDenied  # e.g. crm.lead.list answers {"error": "", "error_description": "Access denied."}
        )
    if error_class is None:
        if status is not None and status >= 500 and status not in _BY_STATUS:
            error_class = ServerError
        else:
            error_class = _BY_STATUS.get(status or 0, RestError)
    shown_code = code or (f"HTTP_{status}" if status is not None else "UNKNOWN_ERROR")
    if error_class is OperationTimeLimit:
        return OperationTimeLimit(
            shown_code, description, http_status=status, reset_at=reset_at_of(time_block)
        )
    return error_class(shown_code, description, http_status=status)


def _non_json_error(status: int) -> RestError | TransientError:
    text = "the portal answered without a JSON body"
    if status == 429:
        return OperationTimeLimit("OPERATION_TIME_LIMIT", text, http_status=status)
    if status >= 500:
        return ServerError(f"HTTP_{status}", text, http_status=status)
    if status in (401, 403):
        return _BY_STATUS[status](f"HTTP_{status}", text, http_status=status)
    return TransientError("NON_JSON_RESPONSE", text, http_status=status)


def error_of(status: int, data: Any, secrets: Iterable[str] = ()) -> RestError | TransientError | None:
    """The exception an HTTP answer means, or None when it is a usable success envelope."""
    if not isinstance(data, Mapping):
        return _non_json_error(status)
    fields = _error_fields(data)
    if fields is not None:
        secrets = tuple(secrets)
        code, description = redact(fields[0], secrets), redact(fields[1], secrets)
        return make_error(code, description, status, data.get("time"))
    if status != 200 or "result" not in data:
        if status == 200:
            return TransientError("NO_RESULT", "the portal answered without a result", http_status=status)
        return make_error("", "", status)
    return None


def _int_or_none(value: object) -> int | None:
    # `next`/`total` of a portal answer: ASCII digits only ("²".isdigit() is True, int("²") raises).
    return ascii_int(value, minimum=-MAX_SAFE_INTEGER)


def parse_response(data: Mapping[str, Any]) -> RestResponse:
    """RestResponse of a success envelope (error_of returned None for it)."""
    time_block = data.get("time")
    return RestResponse(
        result=data.get("result"),
        next=_int_or_none(data.get("next")),
        total=_int_or_none(data.get("total")),
        time=time_block if isinstance(time_block, Mapping) else {},
    )


def _keyed(container: object) -> dict[str, Any]:
    # PHP serializes an empty array as [] and an array with keys 0..n-1 as a JSON list.
    if isinstance(container, Mapping):
        return {str(k): v for k, v in container.items()}
    if isinstance(container, list):
        return {str(i): v for i, v in enumerate(container)}
    return {}


def parse_batch(data: Mapping[str, Any], secrets: Iterable[str] = ()) -> BatchResult:
    """BatchResult of a `batch` success envelope, accepting `[]` or `{}` for every empty container."""
    secrets = tuple(secrets)
    outer = data.get("result")
    if not isinstance(outer, Mapping):
        raise TransientError("MALFORMED_BATCH", "batch answered without a result object")
    errors: dict[str, RestError] = {}
    for key, raw in _keyed(outer.get("result_error")).items():
        fields = _error_fields(raw) if isinstance(raw, Mapping) else None
        code, description = fields if fields is not None else ("", "")
        errors[key] = make_error(redact(code, secrets), redact(description, secrets), None)
    times = {k: v for k, v in _keyed(outer.get("result_time")).items() if isinstance(v, Mapping)}
    totals = {
        k: n for k, v in _keyed(outer.get("result_total")).items() if (n := _int_or_none(v)) is not None
    }
    nexts = {k: n for k, v in _keyed(outer.get("result_next")).items() if (n := _int_or_none(v)) is not None}
    time_block = data.get("time")
    return BatchResult(
        results=_keyed(outer.get("result")),
        errors=errors,
        totals=totals,
        nexts=nexts,
        times=times,
        time=time_block if isinstance(time_block, Mapping) else {},
    )
