"""Parsing the token pair as the OAuth server or an install payload hands it over (into a TokenSet)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from b24connector.bitrix24.errors import MalformedTokenPayload
from b24connector.numbers import ascii_int
from b24connector.tokens import TokenSet


def parse_token_payload(payload: Mapping[str, object], *, now: float | None = None) -> TokenSet:
    """A TokenSet from a token answer (docs/bitrix24-facts.md#f-oauth-5) or an ONAPPINSTALL `auth` block.

    The install event's block (#f-app-8) carries the same keys with string values.
    """
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
            raise MalformedTokenPayload("MISSING_FIELD", "token payload has neither expires nor expires_in")
        expires = current + expires_in
    return TokenSet(
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
