"""The realistic lifecycle: install per app kind, uninstall through bindings only, the token-check cache."""

from __future__ import annotations

import json
from collections.abc import Callable

import requests

from bitrix24_emulator import Emulator
from tests.infra.emulator.conftest import FakeApp
from tests.infra.emulator.helpers import admin, call, token_request

UNINSTALL_AUTH = {
    "auth[domain]",
    "auth[server_endpoint]",
    "auth[client_endpoint]",
    "auth[member_id]",
    "auth[application_token]",
}


def _bind(emu: Emulator, event: str, handler: str) -> None:
    token = emu.issue_tokens(user_id=1)["access_token"]
    assert call(emu, "event.bind", token, event=event, handler=handler).json()["result"] is True


# --- uninstall ------------------------------------------------------------------------------------


def test_uninstall_reaches_no_one_without_a_binding(emu: Emulator, app: FakeApp) -> None:
    # Given an installed app whose handler never called event.bind
    token = emu.issue_tokens()["access_token"]

    # When the administrator removes it
    outcome = admin(emu, "POST", "/uninstall", {"clean": True}).json()

    # Then nothing is sent anywhere, and every chain is revoked
    assert outcome == {"uninstalled": True, "clean": True, "deliveries": []}
    assert app.received == []
    assert call(emu, "app.info", token).json()["error"] == "ERROR_OAUTH"


def test_uninstall_goes_to_bound_handlers_once_without_tokens(emu: Emulator, app: FakeApp) -> None:
    # Given ONAPPUNINSTALL bound to the app's handler, which answers 500
    _bind(emu, "ONAPPUNINSTALL", app.url)
    issued = emu.issue_tokens()
    app_token = emu.application_token
    app.answer_status = 500

    # When the administrator removes the app keeping its data
    outcome = emu.uninstall(clean=False)

    # Then one POST (no retry) with data[CLEAN]=0 and auth[...] without tokens
    assert [(d["event"], d["handler"], d["status"]) for d in outcome["deliveries"]] == [
        ("ONAPPUNINSTALL", app.url, 500)
    ]
    (form,) = app.forms("ONAPPUNINSTALL")
    assert form["data[CLEAN]"] == "0"
    assert {k for k in form if k.startswith("auth[")} == UNINSTALL_AUTH
    assert form["auth[application_token]"] == app_token
    assert issued["access_token"] not in json.dumps(outcome)
    # And the chains and the bindings are gone; refresh answers NOT_INSTALLED
    assert call(emu, "app.info", issued["access_token"]).status_code == 401
    refused = token_request(emu, grant_type="refresh_token", refresh_token=issued["refresh_token"])
    assert refused.json()["error"] == "NOT_INSTALLED"
    assert emu.events()["bindings"] == []
    # And the event arrived when the app was already gone: app.info on the OAuth server says so
    oauth_info = requests.post(
        f"{emu.server_endpoint}app.info", data={"auth": issued["access_token"]}, timeout=5
    )
    assert oauth_info.status_code == 401


def test_direct_send_uninstall_still_uninstalls(emu: Emulator, app: FakeApp) -> None:
    token = emu.issue_tokens()["access_token"]
    assert emu.send_uninstall(app.url, clean=True)["status"] == 200
    assert call(emu, "app.info", token).json()["error"] == "ERROR_OAUTH"


def test_uninstall_refuses_a_non_boolean_clean(emu: Emulator) -> None:
    assert admin(emu, "POST", "/uninstall", {"clean": "yes"}).status_code == 400
    assert emu.state.installed


# --- install --------------------------------------------------------------------------------------


def test_ui_app_gets_no_onappinstall(emu: Emulator, app: FakeApp) -> None:
    # Given a UI app (the default) whose card names an install URL
    emu.configure(install_url=app.url)

    # When an administrator installs it
    outcome = admin(emu, "POST", "/install", {"user_id": 1}).json()

    # Then nothing is POSTed; the install waits for the frame page and BX24.installFinish()
    assert outcome["app_mode"] == "ui"
    assert outcome["deliveries"] == []
    assert outcome["install_pending"] is True
    assert app.received == []
    page = requests.get(emu.frame_url(app.url), timeout=5)
    assert page.status_code == 200
    assert emu.install_finish() == 1
    assert emu.state.installed is True
    assert emu.flush_events(5)
    assert app.received == []  # a local app gets no ONAPPUSERREADY either


def test_api_only_app_gets_onappinstall_on_its_install_url(emu: Emulator, app: FakeApp) -> None:
    emu.configure(app_mode="api_only", install_url=app.url)

    outcome = emu.install(user_id=1)

    assert [(d["event"], d["status"]) for d in outcome["deliveries"]] == [("ONAPPINSTALL", 200)]
    (form,) = app.forms("ONAPPINSTALL")
    assert form["auth[user_id]"] == "1"
    assert form["auth[application_token]"] == emu.application_token
    assert call(emu, "app.info", form["auth[access_token]"]).json()["result"]["INSTALLED"] is True
    assert form["auth[access_token]"] not in json.dumps(outcome)


def test_market_api_only_app_gets_onappuserready_after_install(emu: Emulator, app: FakeApp) -> None:
    emu.configure(app_mode="api_only", market_app=True, install_url=app.url)

    outcome = emu.install(user_id=1)

    assert [d["event"] for d in outcome["deliveries"]] == ["ONAPPINSTALL", "ONAPPUSERREADY"]
    (ready,) = app.forms("ONAPPUSERREADY")
    data = {k[5:-1]: v for k, v in ready.items() if k.startswith("data[")}
    auth = {k[5:-1]: v for k, v in ready.items() if k.startswith("auth[")}
    assert set(data) == {
        "access_token",
        "refresh_token",
        "expires_in",
        "scope",
        "domain",
        "server_endpoint",
        "client_endpoint",
        "member_id",
        "user_id",
        "client_id",
        "status",
        "LANGUAGE_ID",
    }
    assert data["user_id"] == str(emu.config.system_user_id)
    assert data["client_id"] == emu.client_id
    assert auth["user_id"] == "1"
    assert auth["application_token"] == emu.application_token
    # Both pairs are live: the system user's and the installer's
    assert call(emu, "profile", data["access_token"]).json()["result"]["ID"] == str(emu.config.system_user_id)
    assert call(emu, "profile", auth["access_token"]).json()["result"]["ID"] == "1"
    refreshed = token_request(emu, grant_type="refresh_token", refresh_token=data["refresh_token"]).json()
    assert refreshed["user_id"] == emu.config.system_user_id


def test_market_ui_app_gets_onappuserready_when_the_install_finishes(emu: Emulator, app: FakeApp) -> None:
    emu.configure(market_app=True, install_url=app.url)
    assert emu.install(user_id=1)["deliveries"] == []

    # The frame page's BX24.installFinish() finishes the install (reported through the admin endpoint)
    assert (
        requests.post(f"{emu.admin_url}/install-finish", data="installFinish", timeout=5).status_code == 200
    )
    assert emu.flush_events(10)

    (ready,) = app.forms("ONAPPUSERREADY")
    assert ready["auth[user_id]"] == "1"
    # A second installFinish() does not send it again
    requests.post(f"{emu.admin_url}/install-finish", data="installFinish", timeout=5)
    assert emu.flush_events(10)
    assert len(app.forms("ONAPPUSERREADY")) == 1


def test_install_needs_an_administrator_and_an_install_url(emu: Emulator) -> None:
    assert admin(emu, "POST", "/install", {"user_id": 2}).status_code == 400
    emu.configure(app_mode="api_only")
    missing = admin(emu, "POST", "/install", {"user_id": 1})
    assert missing.status_code == 400
    assert "install_url" in missing.json()["error"]


def test_reinstall_after_uninstall_needs_new_bindings(emu: Emulator, app: FakeApp) -> None:
    emu.configure(app_mode="api_only", install_url=app.url)
    _bind(emu, "ONAPPUNINSTALL", app.url)
    first_token = emu.application_token
    emu.uninstall(clean=True)

    emu.install(user_id=1)

    assert emu.application_token != first_token
    assert emu.events()["bindings"] == []
    assert emu.uninstall(clean=True)["deliveries"] == []


def test_events_endpoint_lists_bindings_and_deliveries_without_tokens(emu: Emulator, app: FakeApp) -> None:
    emu.configure(app_mode="api_only", install_url=app.url)
    _bind(emu, "ONAPPUNINSTALL", app.url)
    emu.install(user_id=1)

    body = admin(emu, "GET", "/events").json()

    assert [b["event"] for b in body["bindings"]] == ["ONAPPUNINSTALL"]
    assert body["install_url_bindings"] == {"ONAPPINSTALL": app.url}
    assert [(d["event"], d["handler"], d["status"]) for d in body["deliveries"]] == [
        ("ONAPPINSTALL", app.url, 200)
    ]
    (form,) = app.forms("ONAPPINSTALL")
    assert form["auth[access_token]"] not in json.dumps(body)
    assert form["auth[refresh_token]"] not in json.dumps(body)


# --- token-check cache ----------------------------------------------------------------------------


def test_refreshed_away_token_works_on_the_portal_while_its_check_is_cached(
    emu_factory: Callable[..., Emulator],
) -> None:
    emulator = emu_factory(token_check_cache_seconds=600)
    emulator.clock.freeze()
    issued = emulator.issue_tokens()
    old = issued["access_token"]
    assert call(emulator, "app.info", old).status_code == 200  # the portal caches this check

    # When the chain is refreshed (the old access token dies on the OAuth server)
    token_request(emulator, grant_type="refresh_token", refresh_token=issued["refresh_token"])

    # Then the portal still takes it until the cache entry expires; the OAuth server does not
    assert call(emulator, "crm.lead.list", old, start=-1).status_code == 200
    oauth = requests.post(f"{emulator.server_endpoint}app.info", data={"auth": old}, timeout=5)
    assert oauth.status_code == 401
    emulator.clock.advance(601)
    assert call(emulator, "crm.lead.list", old, start=-1).json()["error"] == "invalid_token"


def test_cached_token_after_an_uninstall_answers_application_not_found(
    emu_factory: Callable[..., Emulator],
) -> None:
    cached = emu_factory(token_check_cache_seconds=3600)
    token = cached.issue_tokens()["access_token"]
    never_checked = cached.issue_tokens()["access_token"]
    assert call(cached, "profile", token).status_code == 200
    cached.uninstall(clean=True)
    # The cached check still passes, but the portal's app row is gone (lib/oauth/auth.php)
    assert call(cached, "profile", token).json() == {
        "error": "APPLICATION_NOT_FOUND",
        "error_description": "Application not found",
    }
    assert call(cached, "profile", never_checked).json()["error"] == "ERROR_OAUTH"

    strict = emu_factory()
    token = strict.issue_tokens()["access_token"]
    assert call(strict, "profile", token).status_code == 200
    strict.uninstall(clean=True)
    assert call(strict, "profile", token).json()["error"] == "ERROR_OAUTH"
