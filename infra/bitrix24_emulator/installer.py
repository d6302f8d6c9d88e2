"""The portal acting toward the app: install page POST, ONAPPINSTALL, ONAPPUNINSTALL (fact sheet section 3)."""

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
    legacy: bool = False,
    placement_options: dict[str, Any] | None = None,
) -> InstallRequest:
    """The UI app's install page POST; each one starts a new token chain (fact sheet section 3.2)."""
    state.begin_install(finished=False)
    pair, _response = state.issue_tokens("install_page")
    config = state.config
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
        # Added by the 2026 docs; older portals may not send them (UNVERIFIED).
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
    state: EmulatorState, url: str, *, event_handler_id: bool = False
) -> InstallRequest:
    """ONAPPINSTALL, form-encoded with bracket keys and every value a string (fact sheet section 3.3)."""
    state.begin_install(finished=True)
    pair, response = state.issue_tokens("install_event")
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
    return InstallRequest(url, {}, fields, pair.chain.chain_id)


def uninstall_request(
    state: EmulatorState, url: str, *, clean: bool, application_token: str | None = None
) -> InstallRequest:
    """ONAPPUNINSTALL (no tokens). A given application_token forges the event and leaves the app installed."""
    if application_token is None:
        token = state.application_token
        state.uninstall()
    else:
        token = application_token
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
        ("auth[application_token]", token),
    ]
    return InstallRequest(url, {}, fields)


def check_target(url: str) -> None:
    """Raise ValueError unless `url` is an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an absolute http(s) URL")


def deliver(request: InstallRequest, timeout: float) -> dict[str, Any]:
    """POST the form to the app; report the app's status and body (redirects are not followed)."""
    check_target(request.url)
    parts = urlsplit(request.url)
    path = parts.path or "/"
    query = "&".join(q for q in (parts.query, urlencode(request.query)) if q)
    target = f"{path}?{query}" if query else path
    body = urlencode(request.fields).encode()
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
            "sent_fields": [name for name, _ in request.fields],
            "sent_query": sorted(request.query),
            "chain_id": request.chain_id,
        }
    finally:
        connection.close()


def frame_html(state: EmulatorState, url: str, *, legacy: bool = False) -> str:
    """The portal page framing the app's install URL with a fresh install POST."""
    check_target(url)
    request = install_page_request(state, url, legacy=legacy)
    return frame_page(action_url=url, query=request.query, fields=request.fields)


def send_install(
    state: EmulatorState,
    url: str,
    kind: InstallKind = "page",
    *,
    legacy: bool = False,
    event_handler_id: bool = False,
) -> dict[str, Any]:
    """Install toward the app: the frame POST ("page") or the ONAPPINSTALL event ("event")."""
    check_target(url)
    if kind == "page":
        request = install_page_request(state, url, legacy=legacy)
    elif kind == "event":
        request = install_event_request(state, url, event_handler_id=event_handler_id)
    else:
        raise ValueError("kind must be 'page' or 'event'")
    return deliver(request, state.config.install_timeout_seconds)


def send_uninstall(
    state: EmulatorState, url: str, *, clean: bool = True, application_token: str | None = None
) -> dict[str, Any]:
    """Send ONAPPUNINSTALL (uninstalling unless the token is forged)."""
    check_target(url)
    request = uninstall_request(state, url, clean=clean, application_token=application_token)
    return deliver(request, state.config.install_timeout_seconds)
