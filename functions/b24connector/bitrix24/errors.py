"""Typed Bitrix24 errors. Texts carry codes and server descriptions only, never a token or secret."""

from __future__ import annotations

import re
from collections.abc import Iterable

# What of a server-given error code or description is ever kept (issue 12: a 7 MB error code, the
# access token inside it, came back in a LeadsFunction answer). Callers redact secrets from the text
# first (redact); these caps then bound length and charset. Raw inputs are cut before any work.
MAX_CODE_CHARS = 64
MAX_DESCRIPTION_CHARS = 200
RAW_CODE_CHARS = 256
RAW_DESCRIPTION_CHARS = 4096
_NOT_CODE = re.compile(r"[^A-Za-z0-9_.:-]+")


def safe_code(code: str) -> str:
    """An error code as shown anywhere: ASCII letters, digits and `_.:-`, at most 64 characters."""
    cleaned = _NOT_CODE.sub("", code[:RAW_CODE_CHARS])[:MAX_CODE_CHARS]
    return cleaned if cleaned or not code else "MALFORMED_ERROR_CODE"


def safe_description(text: str) -> str:
    """A server description as shown anywhere: printable characters only, at most 200 of them."""
    head = text[:RAW_DESCRIPTION_CHARS]
    return "".join(ch if ch.isprintable() else " " for ch in head).strip()[:MAX_DESCRIPTION_CHARS]


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of the given secret values replaced by ``***``."""
    for value in secrets:
        # Very short values would match innocent text and cannot be real tokens anyway.
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class Bitrix24Error(Exception):
    """Base of every error raised by the Bitrix24 protocol layer."""

    retryable = False

    def __init__(self, code: str, description: str = "", *, http_status: int | None = None) -> None:
        # Codes and descriptions may come from a server: capped in length and charset, never raw.
        self.code = safe_code(code)
        self.description = safe_description(description)
        self.http_status = http_status
        super().__init__(self._text())

    def _text(self) -> str:
        status = f" (HTTP {self.http_status})" if self.http_status is not None else ""
        detail = f": {self.description}" if self.description else ""
        return f"{self.code}{status}{detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._text()!r})"


class TransientError(Bitrix24Error):
    """5xx, timeout, connection failure, or a non-JSON/HTML body: worth a later retry.

    `request_sent` is False only when the request provably never reached the server (connection
    refused, DNS failure, TLS handshake failure, connect timeout, or it was never started): the server
    cannot have acted on it. True means it may have, even if no answer came back.
    """

    retryable = True

    def __init__(
        self,
        code: str,
        description: str = "",
        *,
        http_status: int | None = None,
        request_sent: bool = True,
    ) -> None:
        self.request_sent = request_sent
        super().__init__(code, description, http_status=http_status)


# --- OAuth server (/oauth/token/, app.info on the server endpoint) ---------------------------------


class OAuthError(Bitrix24Error):
    """The OAuth server refused the request."""


class InvalidGrant(OAuthError):
    """The code or refresh token is bad, expired or already used: full re-authorization needed."""


class InvalidClient(OAuthError):
    """Bad client_id/client_secret (`invalid_client`, `wrong_client`, also with HTTP 200)."""


class PaymentRequired(OAuthError):
    """The app's trial/paid period is over, or the app was removed."""


class NotInstalled(OAuthError):
    """The app is not installed on that portal (`NOT_INSTALLED`, `ERROR_OAUTH`)."""


class OAuthRequestError(OAuthError):
    """Malformed request or scope problem (`invalid_request`, `invalid_scope`, `insufficient_scope`)."""


class OAuthTransientError(TransientError, OAuthError):
    """The OAuth server failed in a way worth retrying later (never for a code exchange)."""


# --- Portal REST API ------------------------------------------------------------------------------


class RestError(Bitrix24Error):
    """A REST method answered with an error envelope."""


class ExpiredToken(RestError):
    """401 `expired_token`: refresh and retry once."""


class InvalidToken(RestError):
    """401 the grant is dead: token unknown/revoked, app not installed, user gone (docs/bitrix24-errors.md)."""


class AuthServerUnavailable(TransientError, RestError):
    """401 `CONNECTION_ERROR`: the portal could not check the token with the OAuth server; transient."""


class UnknownAuthError(RestError):
    """A 401 whose code is not in docs/bitrix24-errors.md: no evidence of a dead grant, so never taken as one."""


class MethodConfirmWaiting(RestError):
    """401 `METHOD_CONFIRM_WAITING`: an admin must approve the method."""


class AccessDenied(RestError):
    """403 scope or permission errors."""


class MethodNotFound(RestError):
    """404 `ERROR_METHOD_NOT_FOUND`."""


class BadRequest(RestError):
    """400/405 request-shape errors (`INVALID_REQUEST`, batch length/method errors)."""


class QueryLimitExceeded(TransientError, RestError):
    """503 `QUERY_LIMIT_EXCEEDED`: the portal's leaky bucket is full."""


class OverloadLimit(RestError):
    """503 `OVERLOAD_LIMIT`: blocked manually by Bitrix24 support; not worth retrying."""


class OperationTimeLimit(RestError):
    """429 `OPERATION_TIME_LIMIT`: the method is blocked until `reset_at` (Unix time, may be unknown)."""

    def __init__(
        self,
        code: str,
        description: str = "",
        *,
        http_status: int | None = None,
        reset_at: float | None = None,
    ) -> None:
        self.reset_at = reset_at
        super().__init__(code, description, http_status=http_status)


class PortalDeleted(RestError):
    """`PORTAL_DELETED` (500 per docs, 410 per b24pysdk)."""


class ServerError(TransientError, RestError):
    """5xx `INTERNAL_SERVER_ERROR` / `ERROR_UNEXPECTED_ANSWER` or an unknown 5xx."""


class PortalMoved(RestError):
    """302 portal rename that could not be followed (e.g. the new host is not allowed)."""

    def __init__(
        self, code: str, description: str = "", *, http_status: int | None = None, location: str = ""
    ):
        self.location = location
        super().__init__(code, description, http_status=http_status)


class UnsafeEndpoint(Bitrix24Error):
    """A URL or host failed validation; no request was sent."""


class MalformedTokenPayload(OAuthError):
    """A token response or install payload lacks a required field (access/refresh token, member_id)."""


class DeadlineExceeded(TransientError):
    """The caller's time budget ran out before the request could be (re)sent."""


class RequestTooLarge(Bitrix24Error):
    """The request body would pass the client's byte cap; nothing was sent."""


class AnswerTooLarge(TransientError):
    """The server's answer passed the client's byte cap; it was not read further (memory stays bounded)."""


class OAuthAnswerTooLarge(AnswerTooLarge, OAuthTransientError):
    """The OAuth server's answer passed the client's byte cap."""
