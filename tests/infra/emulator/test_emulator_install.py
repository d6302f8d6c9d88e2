"""The portal toward the app: install page POST, ONAPPINSTALL, ONAPPUNINSTALL, BX24 stand-in (section 3)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

import requests

from bitrix24_emulator import Emulator
from tests.infra.emulator.conftest import FakeApp
from tests.infra.emulator.helpers import admin, call, token_request

PAGE_QUERY = {"DOMAIN", "PROTOCOL", "LANG", "APP_SID"}
PAGE_FIELDS = {
    "AUTH_ID",
    "AUTH_EXPIRES",
    "REFRESH_ID",
    "SERVER_ENDPOINT",
    "APPLICATION_TOKEN",
    "APPLICATION_SCOPE",
    "member_id",
    "status",
    "PLACEMENT",
    "PLACEMENT_OPTIONS",
}
LEGACY_PAGE_FIELDS = PAGE_FIELDS - {"SERVER_ENDPOINT", "APPLICATION_TOKEN", "APPLICATION_SCOPE"}
EVENT_AUTH = {
    "access_token",
    "expires",
    "expires_in",
    "scope",
    "domain",
    "server_endpoint",
    "status",
    "client_endpoint",
    "member_id",
    "user_id",
    "refresh_token",
    "application_token",
}


def test_install_page_post_carries_the_documented_fields(
    emu_factory: Callable[..., Emulator], app: FakeApp
) -> None:
    # Given a newer cloud portal (install_page_fields="2026")
    emu = emu_factory(install_page_fields="2026")
    # When the admin opens the app: the portal POSTs the install page
    outcome = admin(emu, "POST", "/send-install", {"url": app.url, "kind": "page"}).json()

    # Then the admin answer reports the app's status and body
    assert outcome["status"] == 200
    assert json.loads(outcome["body"]) == {"status": "success"}
    # And the app got query DOMAIN/PROTOCOL/LANG/APP_SID and the form fields of section 3.2
    (request,) = app.received
    assert request.path == "/install"
    assert request.content_type == "application/x-www-form-urlencoded"
    query = dict(request.query)
    assert set(query) == PAGE_QUERY
    assert query["DOMAIN"] == emu.portal_domain
    assert query["PROTOCOL"] == "0"
    form = dict(request.form)
    assert set(form) == PAGE_FIELDS
    assert form["AUTH_EXPIRES"] == "3600"
    assert form["SERVER_ENDPOINT"] == emu.server_endpoint
    assert form["APPLICATION_TOKEN"] == emu.application_token
    assert form["APPLICATION_SCOPE"] == "crm,user"
    assert form["member_id"] == emu.member_id
    assert form["PLACEMENT"] == "DEFAULT"
    assert json.loads(form["PLACEMENT_OPTIONS"]) == {}
    # And the tokens are a live chain
    assert call(emu, "app.info", form["AUTH_ID"]).status_code == 200
    assert token_request(emu, grant_type="refresh_token", refresh_token=form["REFRESH_ID"]).status_code == 200


def test_legacy_install_page_omits_the_2026_fields(emu: Emulator, app: FakeApp) -> None:
    # The default (the rest module's app.layout form) and an explicit legacy=True agree
    emu.send_install(app.url, "page")
    emu.send_install(app.url, "page", legacy=True)
    assert set(dict(app.received[0].form)) == LEGACY_PAGE_FIELDS
    assert set(dict(app.received[1].form)) == LEGACY_PAGE_FIELDS
    # And the newer fields come when asked for
    emu.send_install(app.url, "page", legacy=False)
    assert set(dict(app.received[2].form)) == PAGE_FIELDS


def test_ui_install_is_unfinished_until_bx24_install_finish(emu: Emulator, app: FakeApp) -> None:
    emu.send_install(app.url, "page")
    token = dict(app.received[0].form)["AUTH_ID"]
    assert call(emu, "app.info", token).json()["result"]["INSTALLED"] is False

    # The app's page calls BX24.installFinish(), which reports to the portal
    script = requests.get(f"{emu.admin_url}/bx24.js", timeout=5)
    assert script.headers["Content-Type"].startswith("application/javascript")
    assert "installFinish" in script.text
    assert "init" in script.text
    assert (
        requests.post(f"{emu.admin_url}/install-finish", data="installFinish", timeout=5).status_code == 200
    )

    assert admin(emu, "GET", "/install-finish-calls").json() == {"install_finish_calls": 1, "installed": True}
    assert call(emu, "app.info", token).json()["result"]["INSTALLED"] is True


def test_onappinstall_event_is_form_encoded_with_bracket_keys(emu: Emulator, app: FakeApp) -> None:
    outcome = emu.send_install(app.url, "event")

    assert outcome["status"] == 200
    (request,) = app.received
    assert request.query == []
    form = request.form
    keys = [k for k, _ in form]
    assert keys[0] == "event"
    assert dict(form)["event"] == "ONAPPINSTALL"
    data = {k[5:-1]: v for k, v in form if k.startswith("data[")}
    auth = {k[5:-1]: v for k, v in form if k.startswith("auth[")}
    assert data == {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"}
    assert set(auth) == EVENT_AUTH
    assert "event_handler_id" not in dict(form)
    assert re.fullmatch(r"\d{10}", auth["expires"])
    assert auth["expires_in"] == "3600"
    assert auth["user_id"] == "1"
    assert auth["scope"] == "crm,user"
    assert auth["client_endpoint"] == emu.client_endpoint
    assert auth["application_token"] == emu.application_token
    assert re.fullmatch(r"\d{10}", dict(form)["ts"])
    assert call(emu, "app.info", auth["access_token"]).json()["result"]["INSTALLED"] is True


def test_each_install_starts_a_new_chain(emu: Emulator, app: FakeApp) -> None:
    before = len(emu.tokens())
    emu.send_install(app.url, "event")
    emu.send_install(app.url, "page")
    assert len(emu.tokens()) == before + 2
    assert {c["origin"] for c in emu.tokens()[-2:]} == {"install_event", "install_page"}


def test_uninstall_revokes_tokens_and_reinstall_gets_a_new_application_token(
    emu: Emulator, app: FakeApp
) -> None:
    # Given an installed app with a live token
    emu.send_install(app.url, "event")
    auth = {k[5:-1]: v for k, v in app.received[0].form if k.startswith("auth[")}
    first_app_token = emu.application_token

    # When the admin removes it with "clean data"
    outcome = admin(emu, "POST", "/send-uninstall", {"url": app.url, "clean": True}).json()

    # Then ONAPPUNINSTALL carries no tokens, only the application_token
    assert outcome["status"] == 200
    form = dict(app.received[1].form)
    assert form["event"] == "ONAPPUNINSTALL"
    assert form["data[CLEAN]"] == "1"
    assert {k for k in form if k.startswith("auth[")} == {
        "auth[domain]",
        "auth[server_endpoint]",
        "auth[client_endpoint]",
        "auth[member_id]",
        "auth[application_token]",
    }
    assert form["auth[application_token]"] == first_app_token
    # And REST and refresh stop working
    revoked = call(emu, "app.info", auth["access_token"])
    assert revoked.status_code == 401
    assert revoked.json()["error"] == "ERROR_OAUTH"
    refused = token_request(emu, grant_type="refresh_token", refresh_token=auth["refresh_token"])
    assert refused.json()["error"] == "NOT_INSTALLED"
    # And a reinstall brings a new application_token
    emu.send_install(app.url, "event")
    assert emu.application_token != first_app_token


def test_forged_uninstall_leaves_the_app_installed(emu: Emulator, app: FakeApp, token: str) -> None:
    outcome = emu.send_uninstall(app.url, clean=False, application_token="forged0token")

    assert outcome["status"] == 200
    form = dict(app.received[0].form)
    assert form["auth[application_token]"] == "forged0token"
    assert form["data[CLEAN]"] == "0"
    assert call(emu, "app.info", token).status_code == 200


def test_frame_page_posts_the_install_form_into_an_iframe(emu: Emulator) -> None:
    page = requests.get(emu.frame_url("http://127.0.0.1:9/install?x=1"), timeout=5)

    assert page.status_code == 200
    html = page.text
    form = re.search(r'<form id="install-form" method="post" action="([^"]+)" target="app-frame">', html)
    assert form is not None
    action = form.group(1).replace("&amp;", "&")
    assert action.startswith("http://127.0.0.1:9/install?x=1&")
    assert set(dict(parse_qsl(urlsplit(action).query))) == PAGE_QUERY | {"x"}
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))
    assert set(fields) == LEGACY_PAGE_FIELDS
    assert '<iframe name="app-frame"' in html
    assert ".submit()" in html


def test_bad_install_targets_are_refused(emu: Emulator) -> None:
    assert admin(emu, "POST", "/send-install", {"url": "ftp://x", "kind": "page"}).status_code == 400
    assert (
        admin(emu, "POST", "/send-install", {"url": "http://127.0.0.1:9/", "kind": "nope"}).status_code == 400
    )
    assert admin(emu, "POST", "/send-uninstall", {"url": "not a url"}).status_code == 400
    assert call(emu, "app.info", emu.issue_tokens()["access_token"]).status_code == 200  # nothing uninstalled
