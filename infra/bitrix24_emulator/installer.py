"""The portal acting toward the app: install page POST, ONAPPINSTALL, ONAPPUNINSTALL (docs/bitrix24-facts.md#f-app-9, #f-app-10)."""

from __future__ import annotations

import http.client
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from bitrix24_emulator.pages import frame_page
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.tokens import IssuedPair

InstallKind = Literal["page", "event"]
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class InstallRequest:
    """What the portal sends: URL query, form fields in wire order."""

    url: str
    query: dict[str, str]
    fields: list[tuple[str, str]]
    chain_id: str | None = None


def install_page_request(
    state: EmulatorState,
    url: str,
    *,
    legacy: bool | None = None,
    placement_options: dict[str, Any] | None = None,
    user_id: int | None = None,
) -> InstallRequest:
    """The UI app's install page POST; each one starts a new token chain (docs/bitrix24-facts.md F-APP-5).

    `legacy` None follows the `install_page_fields` setting ("legacy": the rest module's app.layout
    form, without SERVER_ENDPOINT, APPLICATION_TOKEN, APPLICATION_SCOPE).
    """
    state.begin_install(finished=False, user_id=user_id)
    pair, _response = state.issue_tokens("install_page", user_id)
    config = state.config
    if legacy is None:
        legacy = config.install_page_fields == "legacy"
    query = {
        "DOMAIN": state.portal_domain,
        "PROTOCOL": "1" if state.scheme == "https" else "0",
        "LANG": config.language,
        "APP_SID": secrets.token_hex(16),
    }
    fields = [
        ("AUTH_ID", pair.access.token),
        ("AUTH_EXPIRES", str(config.access_lifetime_seconds)),
        ("REFRESH_ID", pair.refresh.token),
    ]
    if not legacy:
        # Newer cloud portals only (the 2026 docs); the rest module's form has none of them.
        fields += [
            ("SERVER_ENDPOINT", state.server_endpoint),
            ("APPLICATION_TOKEN", state.application_token),
            ("APPLICATION_SCOPE", config.scope),
        ]
    fields += [
        ("member_id", config.member_id),
        ("status", config.app_status),
        ("PLACEMENT", "DEFAULT"),
        ("PLACEMENT_OPTIONS", json.dumps(placement_options or {})),
    ]
    return InstallRequest(url, query, fields, pair.chain.chain_id)


def install_event_request(
    state: EmulatorState, url: str, *, event_handler_id: bool = False, user_id: int | None = None
) -> InstallRequest:
    """ONAPPINSTALL, form-encoded with bracket keys and every value a string (docs/bitrix24-facts.md F-APP-8)."""
    state.begin_install(finished=True, user_id=user_id)
    pair, response = state.issue_tokens("install_event", user_id)
    return InstallRequest(
        url, {}, install_event_fields(state, pair, response, event_handler_id), pair.chain.chain_id
    )


def install_event_fields(
    state: EmulatorState, pair: IssuedPair, response: dict[str, Any], event_handler_id: bool
) -> list[tuple[str, str]]:
    """The ONAPPINSTALL form fields for an issued pair."""
    config = state.config
    fields = [
        ("event", "ONAPPINSTALL"),
        ("data[VERSION]", "1"),
        ("data[ACTIVE]", "Y"),
        ("data[INSTALLED]", "Y"),
        ("data[LANGUAGE_ID]", config.language),
        ("ts", str(int(state.clock.now()))),
    ]
    if event_handler_id:
        # UNVERIFIED whether ONAPPINSTALL carries it; off by default so handlers cannot rely on it.
        fields.append(("event_handler_id", "1"))
    fields += [
        ("auth[access_token]", pair.access.token),
        ("auth[expires]", str(response["expires"])),
        ("auth[expires_in]", str(config.access_lifetime_seconds)),
        ("auth[scope]", config.scope),
        ("auth[domain]", state.portal_domain),
        ("auth[server_endpoint]", state.server_endpoint),
        ("auth[status]", config.app_status),
        ("auth[client_endpoint]", state.client_endpoint),
        ("auth[member_id]", config.member_id),
        ("auth[user_id]", str(pair.chain.user_id)),
        ("auth[refresh_token]", pair.refresh.token),
        ("auth[application_token]", state.application_token),
    ]
    return fields


def uninstall_request(
    state: EmulatorState, url: str, *, clean: bool, application_token: str | None = None
) -> InstallRequest:
    """ONAPPUNINSTALL (no tokens). A given application_token forges the event and leaves the app installed."""
    if application_token is None:
        token = state.application_token
        state.uninstall()
    else:
        token = application_token
    return InstallRequest(url, {}, uninstall_fields(state, clean=clean, application_token=token))


def uninstall_fields(
    state: EmulatorState, *, clean: bool, application_token: str, handler_id: int | None = None
) -> list[tuple[str, str]]:
    """ONAPPUNINSTALL: data[LANGUAGE_ID, CLEAN] and auth[domain, endpoints, member_id, application_token]."""
    config = state.config
    fields = [
        ("event", "ONAPPUNINSTALL"),
        ("data[LANGUAGE_ID]", config.language),
        ("data[CLEAN]", "1" if clean else "0"),
        ("ts", str(int(state.clock.now()))),
        ("auth[domain]", state.portal_domain),
        ("auth[server_endpoint]", state.server_endpoint),
        ("auth[client_endpoint]", state.client_endpoint),
        ("auth[member_id]", config.member_id),
        ("auth[application_token]", application_token),
    ]
    if handler_id is not None:
        fields.insert(1, ("event_handler_id", str(handler_id)))
    return fields


def user_ready_fields(
    state: EmulatorState,
    system: IssuedPair,
    installer: IssuedPair,
    handler_id: int | None = None,
) -> list[tuple[str, str]]:
    """ONAPPUSERREADY: data[...] the system user's pair, auth[...] the installer's pair (F-APP-9)."""
    config = state.config
    fields: list[tuple[str, str]] = [("event", "ONAPPUSERREADY")]
    if handler_id is not None:
        fields.append(("event_handler_id", str(handler_id)))
    fields += [
        ("data[access_token]", system.access.token),
        ("data[refresh_token]", system.refresh.token),
        ("data[expires_in]", str(config.access_lifetime_seconds)),
        ("data[scope]", config.scope),
        # data[domain] is the authorization server's domain in the docs; auth[domain] the portal's.
        ("data[domain]", state.oauth_domain),
        ("data[server_endpoint]", state.server_endpoint),
        ("data[client_endpoint]", state.client_endpoint),
        ("data[member_id]", config.member_id),
        ("data[user_id]", str(system.chain.user_id)),
        ("data[client_id]", config.client_id),
        ("data[status]", config.app_status),
        ("data[LANGUAGE_ID]", config.language),
        ("ts", str(int(state.clock.now()))),
        ("auth[access_token]", installer.access.token),
        ("auth[refresh_token]", installer.refresh.token),
        ("auth[expires_in]", str(config.access_lifetime_seconds)),
        ("auth[scope]", config.scope),
        ("auth[domain]", state.portal_domain),
        ("auth[server_endpoint]", state.server_endpoint),
        ("auth[client_endpoint]", state.client_endpoint),
        ("auth[member_id]", config.member_id),
        ("auth[user_id]", str(installer.chain.user_id)),
        ("auth[status]", config.app_status),
        ("auth[application_token]", state.application_token),
    ]
    return fields


def bound_event_fields(
    state: EmulatorState,
    event: str,
    data: list[tuple[str, str]],
    pair: IssuedPair,
    handler_id: int,
    *,
    ts: int | None = None,
) -> list[tuple[str, str]]:
    """A bound event (e.g. ONCRMLEADADD) as the b24phpsdk capture shows it: an access token, no refresh
    token (docs/bitrix24-facts.md#f-events-7, #f-events-12); `ts` is the event's, shared by its copies."""
    config = state.config
    return [
        ("event", event),
        ("event_handler_id", str(handler_id)),
        *data,
        ("ts", str(int(state.clock.now()) if ts is None else ts)),
        ("auth[access_token]", pair.access.token),
        ("auth[expires]", str(int(pair.access.expires_at))),
        ("auth[expires_in]", str(config.access_lifetime_seconds)),
        ("auth[scope]", config.scope),
        ("auth[domain]", state.portal_domain),
        ("auth[server_endpoint]", state.server_endpoint),
        ("auth[status]", config.app_status),
        ("auth[client_endpoint]", state.client_endpoint),
        ("auth[member_id]", config.member_id),
        ("auth[user_id]", str(pair.chain.user_id)),
        ("auth[application_token]", state.application_token),
    ]


def check_target(url: str) -> None:
    """Raise ValueError unless `url` is an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an absolute http(s) URL")


def deliver(request: InstallRequest, timeout: float) -> dict[str, Any]:
    """POST the form to the app; report the app's status and body (redirects are not followed)."""
    result = post_form(request.url, request.query, request.fields, timeout)
    result["chain_id"] = request.chain_id
    return result


def post_form(
    url: str, query_fields: dict[str, str], fields: list[tuple[str, str]], timeout: float
) -> dict[str, Any]:
    """POST form fields once, as Bitrix24's webhook engine does; raises OSError when nothing answers."""
    check_target(url)
    parts = urlsplit(url)
    path = parts.path or "/"
    query = "&".join(q for q in (parts.query, urlencode(query_fields)) if q)
    target = f"{path}?{query}" if query else path
    body = urlencode(fields).encode()
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname or "", parts.port, timeout=timeout)
    started = time.monotonic()
    try:
        connection.request(
            "POST",
            target,
            body=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": "Bitrix24 Webhook Engine",
            },
        )
        response = connection.getresponse()
        raw = response.read(_MAX_BODY + 1)
        return {
            "status": response.status,
            "headers": dict(response.getheaders()),
            "body": raw[:_MAX_BODY].decode("utf-8", errors="replace"),
            "body_truncated": len(raw) > _MAX_BODY,
            "elapsed_seconds": round(time.monotonic() - started, 4),
            "sent_fields": [name for name, _ in fields],
            "sent_query": sorted(query_fields),
        }
    finally:
        connection.close()


def frame_html(
    state: EmulatorState, url: str, *, legacy: bool | None = None, user_id: int | None = None
) -> str:
    """The portal page framing the app's install URL with a fresh install POST."""
    check_target(url)
    request = install_page_request(state, url, legacy=legacy, user_id=user_id)
    return frame_page(action_url=url, query=request.query, fields=request.fields)


def send_install(
    state: EmulatorState,
    url: str,
    kind: InstallKind = "page",
    *,
    legacy: bool | None = None,
    event_handler_id: bool = False,
    user_id: int | None = None,
) -> dict[str, Any]:
    """Direct-delivery tool: POST the frame form ("page") or ONAPPINSTALL ("event") straight to `url`.

    This is what a bound handler would receive; it ignores app_mode and bindings (see lifecycle.install
    for the realistic path).
    """
    check_target(url)
    if kind == "page":
        request = install_page_request(state, url, legacy=legacy, user_id=user_id)
    elif kind == "event":
        request = install_event_request(state, url, event_handler_id=event_handler_id, user_id=user_id)
    else:
        raise ValueError("kind must be 'page' or 'event'")
    return deliver(request, state.config.install_timeout_seconds)


def send_uninstall(
    state: EmulatorState, url: str, *, clean: bool = True, application_token: str | None = None
) -> dict[str, Any]:
    """Direct-delivery tool: POST ONAPPUNINSTALL straight to `url` (uninstalling unless the token is forged)."""
    check_target(url)
    request = uninstall_request(state, url, clean=clean, application_token=application_token)
    return deliver(request, state.config.install_timeout_seconds)
