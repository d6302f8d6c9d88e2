"""API Gateway HTTP API (payload format 2.0) requests and responses, parsed strictly and cheaply."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from b24connector.problems import Problem, ProblemKind

# Form posts from Bitrix24 are a few kilobytes; anything this large is not one of them.
DEFAULT_MAX_BODY_BYTES = 128 * 1024
DEFAULT_MAX_FIELDS = 500
MAX_QUERY_CHARS = 8 * 1024
_MAX_NESTING = 4


class HttpProblem(Problem):
    """A request the HTTP layer refuses before any use case runs (status chosen here)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        super().__init__(ProblemKind.INVALID, reason, message)


@dataclass(frozen=True, slots=True)
class Fields:
    """Decoded name/value pairs in arrival order (query string or form body); duplicates kept."""

    pairs: tuple[tuple[str, str], ...] = ()

    def names(self) -> set[str]:
        """Every distinct field name."""
        return {name for name, _ in self.pairs}

    def all(self, name: str) -> list[str]:
        """Every value sent under `name`."""
        return [value for key, value in self.pairs if key == name]

    def one(self, name: str) -> str | None:
        """The single value of `name`, None when absent; conflicting duplicates are refused."""
        values = self.all(name)
        if not values:
            return None
        if any(value != values[0] for value in values[1:]):
            raise HttpProblem(
                400, f"{_reason_name(name)}_duplicate", f"Field {name!r} was sent more than once."
            )
        return values[0]

    def single_values(self) -> dict[str, str]:
        """Every field with its one value; conflicting duplicates of any field are refused."""
        return {name: value for name in self.names() if (value := self.one(name)) is not None}

    def nested(self) -> dict[str, Any]:
        """PHP-style bracket keys (`auth[member_id]`, `a[]`) folded into nested dicts and lists."""
        return nest_fields(self.pairs)


def _reason_name(name: str) -> str:
    # ASCII only: the reason travels in the X-Reason-Code header, and a caller picks the field names.
    cleaned = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in name.lower()).strip("_")
    return cleaned[:40] or "field"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The parts of an HTTP API request the handlers use; header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    query: Fields
    cookies: tuple[tuple[str, str], ...]
    body: bytes
    body_was_text: bool  # API Gateway passed the body as text (already decoded), not base64
    request_id: str = ""
    source_ip: str = ""

    @classmethod
    def from_event(
        cls, event: Mapping[str, Any], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ) -> HttpRequest:
        """Parse an HTTP API payload 2.0 event; malformed parts become an HttpProblem (4xx)."""
        context = event.get("requestContext") or {}
        http = context.get("http") or {}
        method = str(http.get("method") or event.get("httpMethod") or "").upper()
        path = str(event.get("rawPath") or http.get("path") or event.get("path") or "/")
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        return cls(
            method=method,
            path=path,
            headers=headers,
            query=_query_fields(event),
            cookies=_cookies(event, headers),
            body=_body(event, max_body_bytes),
            body_was_text=not event.get("isBase64Encoded", False),
            request_id=str(context.get("requestId") or ""),
            source_ip=str(http.get("sourceIp") or ""),
        )

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name`; None when absent. Several different values are refused."""
        values = {value for key, value in self.cookies if key == name}
        if not values:
            return None
        if len(values) > 1:
            raise HttpProblem(400, "cookie_ambiguous", "The browser sent the sign-in cookie more than once.")
        return values.pop()

    def content_type(self) -> tuple[str, dict[str, str]]:
        """The media type (lower-case) and its parameters."""
        return parse_content_type(self.headers.get("content-type", ""))

    def form(self, *, max_fields: int = DEFAULT_MAX_FIELDS) -> Fields:
        """The body as `application/x-www-form-urlencoded` fields, decoded with the declared charset."""
        media_type, params = self.content_type()
        if media_type != "application/x-www-form-urlencoded":
            raise HttpProblem(
                415, "content_type_unsupported", "Expected an application/x-www-form-urlencoded body."
            )
        charset = params.get("charset", "utf-8").lower()
        try:
            # Bytes-to-bytes codecs (base64, rot13, zlib) are registered too but are not charsets.
            if not getattr(codecs.lookup(charset), "_is_text_encoding", True):
                raise LookupError(charset)
        except LookupError:
            raise HttpProblem(415, "charset_unsupported", "The declared charset is not supported.") from None
        # A text body was already decoded by API Gateway as UTF-8 and re-encoded by us the same way.
        text_charset = "utf-8" if self.body_was_text else charset
        try:
            text = self.body.decode(text_charset)
            pairs = parse_qsl(
                text,
                keep_blank_values=True,
                encoding=charset,
                errors="strict",
                max_num_fields=max_fields,
            )
        except UnicodeDecodeError:
            raise HttpProblem(
                400, "body_invalid_encoding", f"The body is not valid {charset} form data."
            ) from None
        except ValueError:
            raise HttpProblem(413, "too_many_fields", "The body has too many fields.") from None
        return Fields(tuple(pairs))


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split `type/subtype; name=value` into the lower-case media type and its parameters."""
    media_type, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        name, sep, param = part.partition("=")
        if sep:
            params[name.strip().lower()] = param.strip().strip('"')
    return media_type.strip().lower(), params


def _query_fields(event: Mapping[str, Any]) -> Fields:
    raw = event.get("rawQueryString")
    if raw is None:
        # Without the raw string duplicates are already comma-joined; take the parsed map as given.
        parsed = event.get("queryStringParameters") or {}
        return Fields(tuple((str(k), str(v)) for k, v in parsed.items()))
    if len(raw) > MAX_QUERY_CHARS:
        raise HttpProblem(414, "query_too_long", "The query string is too long.")
    try:
        return Fields(tuple(parse_qsl(str(raw), keep_blank_values=True, encoding="utf-8", errors="strict")))
    except UnicodeDecodeError:
        raise HttpProblem(400, "query_invalid_encoding", "The query string is not valid UTF-8.") from None
    except ValueError:
        raise HttpProblem(400, "query_invalid", "The query string cannot be parsed.") from None


def _cookies(event: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # Payload 2.0 moves cookies out of the headers into an array of "name=value" strings.
    raw: Iterable[str] = event.get("cookies") or []
    if not event.get("cookies") and headers.get("cookie"):
        raw = headers["cookie"].split(";")
    pairs: list[tuple[str, str]] = []
    for item in raw:
        name, sep, value = str(item).strip().partition("=")
        if sep and name:
            pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def _body(event: Mapping[str, Any], max_bytes: int) -> bytes:
    raw = event.get("body")
    if raw is None:
        return b""
    text = str(raw)
    too_large = HttpProblem(413, "body_too_large", f"The body is larger than {max_bytes} bytes.")
    if event.get("isBase64Encoded"):
        # Refuse before decoding: base64 text is 4/3 the size of what it carries.
        if len(text) > (max_bytes + 2) // 3 * 4:
            raise too_large
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise HttpProblem(400, "body_invalid_base64", "The body is not valid base64.") from None
    else:
        if len(text) > max_bytes:
            raise too_large
        try:
            body = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot come from a real request
            raise HttpProblem(400, "body_invalid_encoding", "The body is not valid text.") from None
    if len(body) > max_bytes:
        raise too_large
    return body


def nest_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Fold bracket keys into nested containers; conflicting or too-deep keys are refused."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        path = _key_path(key)
        node: dict[str, Any] = root
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if part == "":
                # "name[]" appends and must end the key; "a[][b]" has no unambiguous meaning.
                raise HttpProblem(400, "field_conflict", f"Field {key!r} cannot be parsed.")
            if last:
                _set_leaf(node, part, value, key)
            else:
                following = path[depth + 1]
                if following == "" and depth + 2 != len(path):
                    raise HttpProblem(400, "field_conflict", f"Field {key!r} cannot be parsed.")
                if following == "":
                    existing = node.setdefault(part, [])
                    if not isinstance(existing, list):
                        raise HttpProblem(400, "field_conflict", f"Field {key!r} conflicts with another.")
                    existing.append(value)
                    break
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise HttpProblem(400, "field_conflict", f"Field {key!r} conflicts with another.")
                node = child
    return root


def _set_leaf(node: dict[str, Any], part: str, value: str, key: str) -> None:
    existing = node.get(part)
    if existing is None:
        node[part] = value
    elif existing != value:
        reason = "field_conflict" if isinstance(existing, dict | list) else f"{_reason_name(key)}_duplicate"
        raise HttpProblem(400, reason, f"Field {key!r} was sent more than once.")


def _key_path(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    if not bracket or not head or not rest.endswith("]"):
        return [key]
    parts = rest[:-1].split("][")
    if any("[" in part or "]" in part for part in parts):
        return [key]
    if len(parts) > _MAX_NESTING:
        raise HttpProblem(400, "field_too_deep", f"Field {key!r} is nested too deeply.")
    return [head, *parts]


@dataclass(slots=True)
class HttpResponse:
    """An answer in payload 2.0 shape; cookies become Set-Cookie headers at API Gateway."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[str] = field(default_factory=list)

    def to_event(self) -> dict[str, Any]:
        """The dict API Gateway expects back from the function."""
        answer: dict[str, Any] = {
            "statusCode": self.status,
            "headers": dict(self.headers),
            "body": self.body,
            "isBase64Encoded": False,
        }
        if self.cookies:
            answer["cookies"] = list(self.cookies)
        return answer


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def json_response(status: int, payload: Any) -> HttpResponse:
    """A JSON answer that no cache keeps."""
    return HttpResponse(
        status,
        json.dumps(payload, separators=(",", ":")),
        {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff", **NO_STORE},
    )


def redirect(location: str, *, cookies: list[str] | None = None) -> HttpResponse:
    """A 302 to `location` that no cache keeps and that leaks no referrer."""
    return HttpResponse(
        302,
        "",
        {"Location": location, "Referrer-Policy": "no-referrer", **NO_STORE},
        list(cookies or []),
    )


def set_cookie(name: str, value: str, *, max_age: int, path: str = "/") -> str:
    """A host-only, HTTPS-only, script-invisible cookie sent on top-level navigations back to us."""
    return f"{name}={value}; Max-Age={max_age}; Path={path}; Secure; HttpOnly; SameSite=Lax"


def clear_cookie(name: str, *, path: str = "/") -> str:
    """A Set-Cookie value that removes cookie `name`."""
    return f"{name}=; Max-Age=0; Path={path}; Secure; HttpOnly; SameSite=Lax"
