"""Parsing of what portals post: the install page, ONAPPINSTALL/ONAPPUSERREADY and ONAPPUNINSTALL (docs/bitrix24-facts.md#f-app-1 to #f-app-10)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from b24connector.bitrix24.errors import (
    MalformedTokenPayload,
)
from b24connector.bitrix24.tokens import parse_token_payload
from b24connector.identifiers import MEMBER_ID
from b24connector.install.model import (
    EVENT_INSTALL,
    EVENT_USER_READY,
    InstallEvent,
    InstallGrant,
    UninstallNotice,
)
from b24connector.portals import InvalidPortal, PortalPolicy
from b24connector.problems import invalid
from b24connector.tokens import TokenSet

_OPAQUE = re.compile(r"[\x21-\x7e]{1,512}\Z")  # tokens: printable ASCII without spaces


_DIGITS = re.compile(r"[0-9]{1,12}\Z")  # ASCII digits only: str.isdigit() also takes "²" and "٣"


_SCOPE = re.compile(r"[\w,. -]{1,500}\Z", re.ASCII)


_MAX_ACCESS_LIFETIME = 7 * 86_400


_MAX_PLACEMENT_OPTIONS = 16 * 1024


def _optional(fields: Mapping[str, Any], name: str, pattern: re.Pattern[str] = _OPAQUE) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise invalid(f"{_reason(name)}_invalid", f"Field {name} is malformed.")
    return value


def _required(fields: Mapping[str, Any], name: str, pattern: re.Pattern[str] = _OPAQUE) -> str:
    value = _optional(fields, name, pattern)
    if value is None:
        raise invalid(f"{_reason(name)}_missing", f"Field {name} is required.")
    return value


def _reason(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _lifetime(value: str | None, name: str) -> int:
    if value is None or not _DIGITS.match(value) or not 0 < int(value) <= _MAX_ACCESS_LIFETIME:
        raise invalid(f"{_reason(name)}_invalid", f"Field {name} must be a lifetime in seconds.")
    return int(value)


def _tokens(payload: Mapping[str, object], now: float) -> TokenSet:
    try:
        return parse_token_payload(payload, now=now)
    except MalformedTokenPayload:
        raise invalid("tokens_invalid", "The install data has no usable tokens.") from None


def _check_placement_options(raw: object) -> None:
    if raw in (None, ""):
        return
    text = str(raw)
    # Bounded before parsing: json.loads recurses per nesting level.
    if len(text) > _MAX_PLACEMENT_OPTIONS or text.count("[") + text.count("{") > 64:
        raise invalid("placement_options_invalid", "PLACEMENT_OPTIONS is too large.")
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        raise invalid("placement_options_invalid", "PLACEMENT_OPTIONS is not JSON.") from None


def parse_install_page(
    query: Mapping[str, Any], form: Mapping[str, Any], policy: PortalPolicy, *, now: float
) -> InstallGrant:
    """The install page POST: DOMAIN etc. in the query, AUTH_ID/REFRESH_ID/... in the form body."""
    domain = _normalize(policy, _required(query, "DOMAIN", re.compile(r".{1,300}\Z")))
    _check_placement_options(form.get("PLACEMENT_OPTIONS"))
    member_id = _required(form, "member_id", MEMBER_ID)
    access_token = _required(form, "AUTH_ID")
    refresh_token = _required(form, "REFRESH_ID")
    lifetime = _lifetime(_required(form, "AUTH_EXPIRES", re.compile(r".{1,32}\Z")), "AUTH_EXPIRES")
    scope = _optional(form, "APPLICATION_SCOPE", _SCOPE)
    status = _optional(form, "status", re.compile(r"[A-Z]\Z"))
    tokens = _tokens(
        {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "member_id": member_id,
            "expires_in": lifetime,
            "scope": scope or "",
            "status": status or "",
        },
        now,
    )
    return InstallGrant(
        domain=domain,
        tokens=tokens,
        # Older portals omit SERVER_ENDPOINT (docs/bitrix24-facts.md#f-app-5): then the default OAuth server.
        server_hint=_optional(form, "SERVER_ENDPOINT"),
        # ... and APPLICATION_TOKEN: such a portal never gives a UI app its application token.
        application_token=_optional(form, "APPLICATION_TOKEN"),
    )


def _block(payload: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    block = payload.get(name)
    if not isinstance(block, dict):
        raise invalid(f"{name}_missing", f"The event has no {name} block.")
    return block


def _pair(block: Mapping[str, Any], prefix: str, now: float, *, need_app_token: bool) -> dict[str, Any]:
    """The token fields of one event block, checked: ASCII digits only, bounded numbers."""
    _required(block, "member_id", MEMBER_ID)
    _required(block, "access_token")
    _required(block, "refresh_token")
    fields: dict[str, Any] = {
        name: block.get(name)
        for name in ("access_token", "refresh_token", "member_id", "scope", "status", "server_endpoint")
    }
    for name in ("expires", "expires_in", "user_id"):
        value = block.get(name)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _DIGITS.match(value):
            raise invalid(f"{prefix}_{name}_invalid", f"Field {prefix}[{name}] must be a number.")
        fields[name] = value
    if fields.get("expires") is None:
        _lifetime(fields.get("expires_in"), f"{prefix}[expires_in]")
    elif not int(fields["expires"]) <= now + _MAX_ACCESS_LIFETIME:
        raise invalid(f"{prefix}_expires_invalid", f"Field {prefix}[expires] is not a sane time.")
    if fields.get("scope") is not None:
        _optional(block, "scope", _SCOPE)
    if need_app_token:
        _required(block, "application_token")
    return fields


def _portal_host(policy: PortalPolicy, client_endpoint: str | None) -> str:
    """The portal host of a claimed client endpoint (ONAPPUSERREADY's `domain` is the OAuth server)."""
    if client_endpoint is None:
        raise invalid("client_endpoint_missing", "The event names no client endpoint.")
    try:
        host = policy.normalize(client_endpoint.partition("://")[2].partition("/")[0])
        policy.check_client_endpoint(client_endpoint, host)
    except InvalidPortal as exc:
        raise invalid("domain_invalid", f"The portal address is not allowed ({exc.reason}).") from None
    return host


def _event_grant(
    block: Mapping[str, Any], prefix: str, policy: PortalPolicy, now: float, *, domain: str | None
) -> InstallGrant:
    fields = _pair(block, prefix, now, need_app_token=False)
    claimed_endpoint = _optional(block, "client_endpoint")
    return InstallGrant(
        domain=domain if domain is not None else _portal_host(policy, claimed_endpoint),
        tokens=_tokens(fields, now),
        server_hint=_optional(block, "server_endpoint"),
        application_token=_optional(block, "application_token"),
        claimed_client_endpoint=claimed_endpoint,
    )


def parse_install_event(payload: Mapping[str, Any], policy: PortalPolicy, *, now: float) -> InstallEvent:
    """ONAPPINSTALL or ONAPPUSERREADY, form fields `auth[...]`/`data[...]` (strings), extras tolerated."""
    name = str(payload.get("event") or "").upper()
    auth = _block(payload, "auth")
    if name == EVENT_INSTALL:
        _required(auth, "application_token")
        domain = _normalize(policy, _required(auth, "domain", re.compile(r".{1,300}\Z")))
        return InstallEvent(name, _event_grant(auth, "auth", policy, now, domain=domain))
    if name == EVENT_USER_READY:
        data = _block(payload, "data")
        _required(auth, "application_token")
        # Both blocks' `domain` is the OAuth server's host (docs/bitrix24-facts.md#f-app-9): the portal is the endpoint's.
        system = _event_grant(data, "data", policy, now, domain=None)
        installer = _event_grant(auth, "auth", policy, now, domain=system.domain)
        if installer.tokens.member_id != system.tokens.member_id:
            raise invalid("member_mismatch", "The event's two grants name different portals.")
        return InstallEvent(name, replace(system, application_token=None), installer)
    raise invalid("event_unsupported", "This event is not handled here.")


def parse_uninstall_event(payload: Mapping[str, Any]) -> UninstallNotice:
    """ONAPPUNINSTALL: `auth[member_id]`, `auth[application_token]`, `data[CLEAN]`."""
    auth = _block(payload, "auth")
    member_id = _required(auth, "member_id", MEMBER_ID)
    token = _required(auth, "application_token")
    data = payload.get("data")
    clean_raw = data.get("CLEAN") if isinstance(data, dict) else None
    return UninstallNotice(
        member_id=member_id, application_token=token, clean=str(clean_raw).upper() in {"1", "Y"}
    )


def _normalize(policy: PortalPolicy, raw: str) -> str:
    try:
        return policy.normalize(raw)
    except InvalidPortal as exc:
        raise invalid("domain_invalid", f"The portal address is not allowed ({exc.reason}).") from None
