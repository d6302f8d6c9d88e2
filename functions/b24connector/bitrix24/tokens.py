"""The token pair and its metadata as the OAuth server or an install payload hands them over."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from b24connector.bitrix24.errors import MalformedTokenPayload
from b24connector.numbers import ascii_int


@dataclass(frozen=True, slots=True)
class TokenSet:
    """An access/refresh token pair with the portal facts that came with it. Secrets hidden from repr."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: int  # Unix time the access token expires
    member_id: str
    client_endpoint: str  # e.g. https://portal.bitrix24.com/rest/
    server_endpoint: str  # e.g. https://oauth.bitrix.info/rest/
    scope: str = ""
    status: str = ""
    user_id: int | None = None
    obtained_at: int = field(default_factory=lambda: int(time.time()))

    def access_expired(self, now: float | None = None, *, skew_seconds: int = 30) -> bool:
        """True when the access token is expired or will be within `skew_seconds`."""
        return (now if now is not None else time.time()) >= self.expires_at - skew_seconds

    @classmethod
    def from_payload(cls, payload: Mapping[str, object], *, now: float | None = None) -> TokenSet:
        """Parse a token response (fact sheet 2.4) or an ONAPPINSTALL `auth` block (3.3, string values)."""
        current = int(now if now is not None else time.time())
        access_token = _text(payload, "access_token")
        refresh_token = _text(payload, "refresh_token")
        member_id = _text(payload, "member_id")
        for name, value in (
            ("access_token", access_token),
            ("refresh_token", refresh_token),
            ("member_id", member_id),
        ):
            if not value:
                raise MalformedTokenPayload("MISSING_FIELD", f"token payload has no {name}")
        expires = _int(payload, "expires")
        if expires is None:
            expires_in = _int(payload, "expires_in")
            if expires_in is None:
                raise MalformedTokenPayload(
                    "MISSING_FIELD", "token payload has neither expires nor expires_in"
                )
            expires = current + expires_in
        return cls(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=expires,
            member_id=member_id,
            client_endpoint=_text(payload, "client_endpoint"),
            server_endpoint=_text(payload, "server_endpoint"),
            scope=_text(payload, "scope"),
            status=_text(payload, "status"),
            user_id=_int(payload, "user_id"),
            obtained_at=current,
        )


def _text(payload: Mapping[str, object], name: str) -> str:
    value = payload.get(name)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedTokenPayload("BAD_FIELD", f"token payload field {name} is not text")
    return str(value).strip()


def _int(payload: Mapping[str, object], name: str) -> int | None:
    """Integer fields arrive as JSON numbers from the OAuth server and as strings in form payloads.

    Only non-negative integers from ASCII digits within MAX_SAFE_INTEGER count ("²" or a 5,000-digit
    number is a malformed payload, not a crash, and nothing DynamoDB cannot store gets that far).
    """
    value = payload.get(name)
    if value is None or value == "":
        return None
    number = ascii_int(value)
    if number is None:
        raise MalformedTokenPayload("BAD_FIELD", f"token payload field {name} is not a sane integer")
    return number
