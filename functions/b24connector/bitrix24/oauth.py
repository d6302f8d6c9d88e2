"""Client of the Bitrix24 OAuth server: authorize URL, code exchange, refresh and app.info.

Bitrix24 quirks handled here (docs/bitrix24-facts.md F-OAUTH-1 to F-OAUTH-10): the authorize page
lives on the user's own portal while the token endpoint lives on a regional OAuth server chosen from
an allow-list; form POSTs keep secrets out of URLs; `error` is checked even on HTTP 200
(`wrong_client`); a code exchange is never retried.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import requests

from b24connector.bitrix24.errors import (
    RAW_CODE_CHARS,
    RAW_DESCRIPTION_CHARS,
    Bitrix24Error,
    ExpiredToken,
    InvalidClient,
    InvalidGrant,
    InvalidToken,
    NotInstalled,
    OAuthAnswerTooLarge,
    OAuthError,
    OAuthRequestError,
    OAuthTransientError,
    PaymentRequired,
    UnsafeEndpoint,
    redact,
)
from b24connector.bitrix24.tokens import parse_token_payload
from b24connector.bitrix24.transport import (
    DEFAULT_TIMEOUT,
    BodyDeadline,
    BodyTooLarge,
    call_deadline,
    decode_body,
    read_body,
    request_never_sent,
    shared_session,
)
from b24connector.numbers import ascii_int
from b24connector.portals import is_loopback_host
from b24connector.tokens import TokenSet

if TYPE_CHECKING:
    from b24connector.settings import Settings

_HOST_PORT = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[1-9][0-9]{0,4})?\Z")
_SERVER_PATHS = ("", "/", "/rest", "/rest/")
# Token and app.info answers are a few hundred bytes; anything near this is not an OAuth answer.
MAX_OAUTH_ANSWER_BYTES = 64 * 1024
_MIN_CALL_SECONDS = 0.05  # below this a token call cannot complete: it is not started

# OAuth-server `error` codes (docs/bitrix24-facts.md F-OAUTH-6, F-OAUTH-7), lower-cased, to the exception class they mean.
_OAUTH_ERRORS: dict[str, type[Bitrix24Error]] = {
    "invalid_grant": InvalidGrant,
    "bad_verification_code": InvalidGrant,
    "invalid_client": InvalidClient,
    "wrong_client": InvalidClient,
    "payment_required": PaymentRequired,
    "not_installed": NotInstalled,
    "error_oauth": NotInstalled,  # "Application not installed"
    "invalid_request": OAuthRequestError,
    "invalid_scope": OAuthRequestError,
    "insufficient_scope": OAuthRequestError,
    # app.info on the OAuth server judges an access token, so these keep their REST meaning.
    "expired_token": ExpiredToken,
    "invalid_token": InvalidToken,
    "no_auth_found": InvalidToken,
}


@dataclass(frozen=True, slots=True)
class AppInfo:
    """What the OAuth server's app.info says about an access token's app installation."""

    member_id: str
    domain: str
    client_id: str
    client_endpoint: str
    installed: bool
    status: str
    scope: str
    user_id: int | None


def _parse_server(base_url: str, *, local_mode: bool) -> tuple[str, str]:
    """(scheme, netloc) of an allow-listed OAuth server base URL; raise ValueError when unsafe."""
    lowered = base_url.strip().lower().rstrip("/")
    scheme, sep, netloc = lowered.partition("://")
    if not sep or not _HOST_PORT.match(netloc):
        raise ValueError("OAuth server base URLs look like https://oauth.bitrix.info")
    if scheme == "http":
        if not (local_mode and is_loopback_host(netloc)):
            raise ValueError("plain-http OAuth servers are allowed for loopback hosts in local mode only")
    elif scheme != "https":
        raise ValueError("OAuth server base URLs must be https")
    return scheme, netloc


def oauth_error(status: int, data: Any, secrets_sent: Sequence[str] = ()) -> Bitrix24Error | None:
    """The typed error an OAuth-server answer carries, or None for a usable JSON success body."""
    if not isinstance(data, dict):
        return OAuthTransientError(
            "NON_JSON_RESPONSE", "the OAuth server answered without JSON", http_status=status
        )
    raw_error = data.get("error")
    if isinstance(raw_error, dict):  # REST v3 shape
        code = str(raw_error.get("code") or "")[:RAW_CODE_CHARS]
        description = str(raw_error.get("message") or "")[:RAW_DESCRIPTION_CHARS]
    else:
        code = str(raw_error or "")[:RAW_CODE_CHARS]
        description = str(data.get("error_description") or "")[:RAW_DESCRIPTION_CHARS]
    # A server that echoes a request value must not smuggle a secret into our exception text; the
    # error classes then cap length and charset (errors.safe_code, safe_description).
    code = redact(code, secrets_sent)
    description = redact(description, secrets_sent)
    if code:
        if status >= 500:
            return OAuthTransientError(code, description, http_status=status)
        error_class = _OAUTH_ERRORS.get(code.lower(), OAuthError)
        return error_class(code, description, http_status=status)
    if status >= 500:
        return OAuthTransientError(f"HTTP_{status}", description, http_status=status)
    if status != 200:
        return OAuthError(f"HTTP_{status}", description, http_status=status)
    return None


class OAuthClient:
    """Talks to the allow-listed Bitrix24 OAuth servers; the client secret is fetched per request."""

    def __init__(
        self,
        client_id: str,
        client_secret: Callable[[], str],
        servers: Sequence[str],
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        local_mode: bool = False,
        clock: Callable[[], float] = time.time,
        total_timeout: float | None = None,
        max_answer_bytes: int = MAX_OAUTH_ANSWER_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not client_id or not servers:
            raise ValueError("an OAuth client needs a client_id and at least one server")
        self.client_id = client_id
        self._client_secret = client_secret
        self._servers = [_parse_server(s, local_mode=local_mode) for s in servers]
        self._session = session
        self._timeout = timeout
        self.local_mode = local_mode
        self._clock = clock
        # One call, answer included, never takes longer than this: the refresh lease
        # (2 x HTTP_TIMEOUT_SECONDS + 10 s, token_refresh/policy.py RefreshPolicy) always outlives it.
        self.total_timeout = total_timeout if total_timeout is not None else timeout[1]
        self._max_answer_bytes = max_answer_bytes
        self._monotonic = monotonic

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        client_secret: Callable[[], str],
        *,
        session: requests.Session | None = None,
    ) -> OAuthClient:
        """A client for BITRIX24_CLIENT_ID and OAUTH_SERVERS; `client_secret` reads the secret store."""
        read_timeout = settings.http_timeout_seconds
        return cls(
            settings.client_id,
            client_secret,
            settings.oauth_servers,
            session=session,
            timeout=(min(3.05, read_timeout), read_timeout),
            local_mode=settings.local_mode,
        )

    def __repr__(self) -> str:
        return f"OAuthClient(client_id={self.client_id!r}, servers={self.servers!r})"

    @property
    def servers(self) -> list[str]:
        """The allow-listed base URLs, default first."""
        return [f"{scheme}://{netloc}" for scheme, netloc in self._servers]

    def authorize_url(self, portal_host: str, state: str, *, code_challenge: str | None = None) -> str:
        """The portal's consent URL (F-OAUTH-1 in docs/bitrix24-facts.md); `portal_host` must come from PortalPolicy.normalize."""
        host = portal_host.lower()
        if not _HOST_PORT.match(host):
            raise UnsafeEndpoint("UNSAFE_PORTAL_HOST", "portal host is not a normalized host[:port]")
        scheme = "http" if self.local_mode and is_loopback_host(host) else "https"
        params = {"client_id": self.client_id, "state": state}
        if code_challenge is not None:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        return f"{scheme}://{host}/oauth/authorize/?{urlencode(params)}"

    def resolve_server(self, hint: str | None) -> str:
        """The allow-listed base URL named by a `server_domain` or `server_endpoint` hint (None: default)."""
        if not hint:
            return self.servers[0]
        lowered = hint.strip().lower()
        for scheme, netloc in self._servers:
            if lowered == netloc:
                return f"{scheme}://{netloc}"
            if lowered in {f"{scheme}://{netloc}{path}" for path in _SERVER_PATHS}:
                return f"{scheme}://{netloc}"
        raise UnsafeEndpoint("UNSAFE_OAUTH_SERVER", "the OAuth server hint is not on the allow-list")

    def exchange_code(
        self,
        code: str,
        *,
        server_hint: str | None = None,
        code_verifier: str | None = None,
        deadline: float | None = None,
    ) -> TokenSet:
        """Trade a single-use authorization code for tokens: one POST, never retried."""
        if not code:
            raise OAuthRequestError("invalid_request", "empty authorization code")
        secret = self._client_secret()
        form = {
            "grant_type": "authorization_code",
            "client_id": self.client_id,
            "client_secret": secret,
            "code": code,
        }
        if code_verifier is not None:
            form["code_verifier"] = code_verifier
        secrets_sent = [secret, code] + ([code_verifier] if code_verifier else [])
        data = self._post(f"{self.resolve_server(server_hint)}/oauth/token/", form, secrets_sent, deadline)
        return parse_token_payload(data, now=self._clock())

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        """Rotate a refresh token: one POST; the caller owns retries and persisting the new pair.

        `deadline` (a time.monotonic() value) ends the call, answer included, by then: pass the end
        of the refresh lease it runs under, so the call can never outlive the lease.
        """
        if not refresh_token:
            raise OAuthRequestError("invalid_request", "empty refresh token")
        secret = self._client_secret()
        form = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": secret,
            "refresh_token": refresh_token,
        }
        data = self._post(
            f"{self.resolve_server(server_hint)}/oauth/token/", form, [secret, refresh_token], deadline
        )
        return parse_token_payload(data, now=self._clock())

    def app_info(
        self, access_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> AppInfo:
        """Ask the OAuth server which installation an access token belongs to (trusted source)."""
        if not access_token:
            raise InvalidToken("NO_AUTH_FOUND", "empty access token")
        data = self._post(
            f"{self.resolve_server(server_hint)}/rest/app.info",
            {"auth": access_token},
            [access_token],
            deadline,
        )
        return parse_app_info(data)

    def _post(
        self,
        url: str,
        form: Mapping[str, str],
        secrets_sent: Sequence[str],
        deadline: float | None = None,
    ) -> dict[str, Any]:
        now = self._monotonic()
        end = now + self.total_timeout if deadline is None else min(now + self.total_timeout, deadline)
        remaining = end - now
        if remaining < _MIN_CALL_SECONDS:
            raise OAuthTransientError(
                "DEADLINE_EXCEEDED", "no time left for an OAuth server call", request_sent=False
            )
        connect, read = self._timeout
        timeout = (min(connect, remaining), min(read, remaining))
        session = self._session or shared_session()
        try:
            with call_deadline(time.monotonic() + remaining):
                response = session.post(url, data=form, timeout=timeout, allow_redirects=False, stream=True)
        except requests.Timeout as exc:
            raise OAuthTransientError(
                "TIMEOUT", "the OAuth server did not answer in time", request_sent=not request_never_sent(exc)
            ) from None
        except requests.RequestException as exc:
            if self._monotonic() >= end:  # the deadline cut the wait for headers
                raise OAuthTransientError(
                    "TIMEOUT",
                    "the OAuth server did not answer in time",
                    request_sent=not request_never_sent(exc),
                ) from None
            raise OAuthTransientError(
                "CONNECTION_ERROR",
                "the OAuth server could not be reached",
                request_sent=not request_never_sent(exc),
            ) from None
        try:
            body = read_body(
                response, max_bytes=self._max_answer_bytes, deadline=end, monotonic=self._monotonic
            )
        except BodyTooLarge:
            raise OAuthAnswerTooLarge(
                "ANSWER_TOO_LARGE",
                f"the OAuth server answered more than {self._max_answer_bytes} bytes",
                http_status=response.status_code,
            ) from None
        except BodyDeadline:
            raise OAuthTransientError(
                "TIMEOUT", "the OAuth server did not finish its answer in time"
            ) from None
        except requests.RequestException:
            raise OAuthTransientError("CONNECTION_ERROR", "the OAuth server's answer broke off") from None
        data = decode_body(body)
        error = oauth_error(response.status_code, data, secrets_sent)
        if error is not None:
            raise error
        return data  # type: ignore[no-any-return]  # oauth_error returned None, so data is a dict


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().upper() in {"Y", "1", "TRUE", "YES"}
    return bool(value)


def parse_app_info(data: Mapping[str, Any]) -> AppInfo:
    """Parse the OAuth server's app.info answer (docs/bitrix24-facts.md#f-oauth-8) into AppInfo."""
    result = data.get("result")
    install = result.get("install") if isinstance(result, dict) else None
    if not isinstance(result, dict) or not isinstance(install, dict):
        raise OAuthError("MALFORMED_APP_INFO", "app.info answered without result.install")
    member_id = str(install.get("member_id") or "")
    if not member_id:
        raise OAuthError("MALFORMED_APP_INFO", "app.info answered without member_id")
    return AppInfo(
        member_id=member_id,
        domain=str(install.get("domain") or "").lower(),
        client_id=str(result.get("client_id") or ""),
        client_endpoint=str(install.get("client_endpoint") or ""),
        installed=_as_bool(install.get("installed")),
        status=str(install.get("status") or ""),
        scope=str(install.get("scope") or result.get("scope") or ""),
        user_id=ascii_int(result.get("user_id")),
    )
