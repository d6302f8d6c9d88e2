"""Users, user.admin/profile, event.bind/get/unbind and bound CRM events (docs/bitrix24-facts.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest

from bitrix24_emulator import Emulator
from tests.infra.emulator.conftest import FakeApp
from tests.infra.emulator.helpers import admin, call, token_request


def _token(emu: Emulator, user_id: int) -> str:
    return str(emu.issue_tokens(user_id=user_id)["access_token"])


# --- users -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("user_id", "is_admin"), [(1, True), (2, False), (3, False)])
def test_user_admin_answers_for_the_tokens_user(emu: Emulator, user_id: int, is_admin: bool) -> None:
    answer = call(emu, "user.admin", _token(emu, user_id))
    assert answer.status_code == 200
    assert answer.json()["result"] is is_admin


def test_profile_has_the_documented_shape(emu: Emulator) -> None:
    admin_profile = call(emu, "profile", _token(emu, 1)).json()["result"]
    employee = call(emu, "profile", _token(emu, 2)).json()["result"]

    assert set(admin_profile) == {"ID", "ADMIN", "NAME", "LAST_NAME", "PERSONAL_GENDER", "TIME_ZONE"}
    assert (admin_profile["ID"], admin_profile["ADMIN"]) == ("1", True)
    assert (employee["ID"], employee["ADMIN"]) == ("2", False)


def test_system_user_is_not_an_administrator_by_default(emu_factory: Callable[..., Emulator]) -> None:
    emulator = emu_factory()
    system = emulator.config.system_user_id
    assert call(emulator, "user.admin", _token(emulator, system)).json()["result"] is False
    emulator.configure(system_user_admin=True)
    assert call(emulator, "user.admin", _token(emulator, system)).json()["result"] is True


def test_admin_api_issues_and_approves_as_a_user(emu: Emulator) -> None:
    issued = admin(emu, "POST", "/tokens/issue", {"user_id": 3}).json()
    assert issued["user_id"] == 3
    assert admin(emu, "POST", "/tokens/issue", {}).json()["user_id"] == 1
    assert admin(emu, "POST", "/tokens/issue", {"user_id": 99}).status_code == 400
    assert admin(emu, "POST", "/tokens/issue", {"user_id": "x"}).status_code == 400

    approved = admin(emu, "POST", "/authorize", {"state": "s1", "user_id": 2}).json()
    query = parse_qs(urlsplit(approved["location"]).query)
    assert query["state"] == ["s1"]
    assert query["code"] == [approved["code"]]
    exchanged = token_request(emu, grant_type="authorization_code", code=approved["code"]).json()
    assert exchanged["user_id"] == 2
    assert admin(emu, "POST", "/authorize", {"state": "s", "user_id": 0}).status_code == 400


def test_stats_count_requests_by_user(emu: Emulator) -> None:
    emu.reset()
    for user_id, calls in ((1, 2), (2, 3)):
        token = _token(emu, user_id)
        for _ in range(calls):
            call(emu, "profile", token)
    call(emu, "profile", "not-a-token")
    assert emu.stats()["requests_by_user"] == {"1": 2, "2": 3}
    assert admin(emu, "GET", "/stats").json()["requests_by_user"] == {"1": 2, "2": 3}


# --- event.bind / event.get / event.unbind ----------------------------------------------------------


def test_bind_get_unbind_as_an_administrator(emu: Emulator) -> None:
    token = _token(emu, 1)
    handler = "https://app.example.com/events"

    bound = call(emu, "event.bind", token, event="OnAppUninstall", handler=handler)
    assert bound.status_code == 200
    assert bound.json()["result"] is True

    listed = call(emu, "event.get", token).json()["result"]
    assert listed == [{"event": "ONAPPUNINSTALL", "handler": handler, "auth_type": "0", "offline": 0}]

    duplicate = call(emu, "event.bind", token, event="ONAPPUNINSTALL", handler=handler)
    assert duplicate.status_code == 400
    assert duplicate.json() == {
        "error": "ERROR_CORE",
        "error_description": "Unable to set event handler: Handler already binded",
    }

    unbound = call(emu, "event.unbind", token, event="ONAPPUNINSTALL", handler=handler)
    assert unbound.json()["result"] == {"count": 1}
    assert call(emu, "event.get", token).json()["result"] == []
    assert call(emu, "event.unbind", token, event="ONAPPUNINSTALL", handler=handler).json()["result"] == {
        "count": 0
    }


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"event": "ONNOTHING", "handler": "https://a.example/h"}, 400, "ERROR_EVENT_NOT_FOUND"),
        ({"handler": "https://a.example/h"}, 400, "ERROR_ARGUMENT"),
        ({"event": "ONAPPUNINSTALL"}, 400, "ERROR_ARGUMENT"),
        (
            {"event": "ONAPPUNINSTALL", "handler": "https://a.example/h", "event_type": "x"},
            400,
            "ERROR_ARGUMENT",
        ),
        ({"event": "ONAPPUNINSTALL", "handler": "http://localhost/h"}, 400, "ERROR_WRONG_HANDLER_URL"),
        ({"event": "ONAPPUNINSTALL", "handler": "not a url"}, 400, "ERROR_WRONG_HANDLER_URL"),
        ({"event": "ONAPPUNINSTALL", "handler": "ftp://a.example/h"}, 400, "ERROR_UNSUPPORTED_PROTOCOL"),
    ],
)
def test_bind_refuses_bad_input(emu: Emulator, params: dict[str, str], status: int, error: str) -> None:
    answer = call(emu, "event.bind", _token(emu, 1), **params)
    assert answer.status_code == status
    assert answer.json()["error"] == error
    assert "time" not in answer.json()
    assert emu.events()["bindings"] == []


def test_crm_events_need_the_crm_scope(emu_factory: Callable[..., Emulator]) -> None:
    emulator = emu_factory(scope="user")
    answer = call(
        emulator, "event.bind", _token(emulator, 1), event="ONCRMLEADADD", handler="https://a.example/h"
    )
    assert answer.json()["error"] == "ERROR_EVENT_NOT_FOUND"


def test_non_administrator_binds_only_for_themselves(emu: Emulator) -> None:
    employee = _token(emu, 2)
    handler = "https://app.example.com/events"

    # A handler bound by an employee runs as that employee
    assert call(emu, "event.bind", employee, event="ONAPPUNINSTALL", handler=handler).json()["result"] is True
    # Naming another user, or an offline event, needs an administrator
    other = call(emu, "event.bind", employee, event="ONCRMLEADADD", handler=handler, auth_type=1)
    assert other.status_code == 403
    assert other.json() == {
        "error": "ACCESS_DENIED",
        "error_description": "Access denied! Event binding with AUTH_TYPE requires administrator access rights",
    }
    offline = call(emu, "event.bind", employee, event="ONCRMLEADADD", event_type="offline")
    assert offline.status_code == 403

    # The employee sees only their own rows; the administrator sees every row
    call(emu, "event.bind", _token(emu, 1), event="ONCRMLEADADD", handler=handler)
    assert call(emu, "event.get", employee).json()["result"] == [
        {"event": "ONAPPUNINSTALL", "handler": handler, "auth_type": "2", "offline": 0}
    ]
    assert len(call(emu, "event.get", _token(emu, 1)).json()["result"]) == 2

    # event.unbind by the employee removes only their rows
    removed = call(emu, "event.unbind", employee, event="ONCRMLEADADD", handler=handler)
    assert removed.json()["result"] == {"count": 0}


def test_event_bind_requires_admin_setting(emu: Emulator) -> None:
    emu.configure(event_bind_requires_admin=True)
    answer = call(emu, "event.bind", _token(emu, 3), event="ONAPPUNINSTALL", handler="https://a.example/h")
    assert answer.status_code == 403
    assert answer.json()["error"] == "ACCESS_DENIED"
    assert call(
        emu, "event.bind", _token(emu, 1), event="ONAPPUNINSTALL", handler="https://a.example/h"
    ).json()["result"]


# --- bound CRM events --------------------------------------------------------------------------------


def test_lead_events_reach_only_bound_handlers_once(emu: Emulator, app: FakeApp) -> None:
    # Given ONCRMLEADADD and ONCRMLEADDELETE bound (not ONCRMLEADUPDATE), and a handler answering 500
    token = _token(emu, 1)
    for event in ("ONCRMLEADADD", "ONCRMLEADDELETE"):
        assert call(emu, "event.bind", token, event=event, handler=app.url).json()["result"] is True
    app.answer_status = 500

    # When an employee adds, updates and deletes a lead
    employee = _token(emu, 2)
    lead_id = call(emu, "crm.lead.add", employee, fields={"TITLE": "Evented"}).json()["result"]
    assert call(emu, "crm.lead.update", employee, id=lead_id, fields={"TITLE": "Changed"}).json()["result"]
    assert call(emu, "crm.lead.get", employee, id=lead_id).json()["result"]["TITLE"] == "Changed"
    assert call(emu, "crm.lead.delete", employee, id=lead_id).json()["result"] is True
    assert emu.flush_events(10)

    # Then the add and the delete arrived once each (a 500 is not retried); the update was not bound
    assert [dict(c.form)["event"] for c in app.received] == ["ONCRMLEADADD", "ONCRMLEADDELETE"]
    added = app.forms("ONCRMLEADADD")[0]
    assert added["data[FIELDS][ID]"] == str(lead_id)
    assert {k for k in added if k.startswith("auth[")} == {
        "auth[access_token]",
        "auth[expires]",
        "auth[expires_in]",
        "auth[scope]",
        "auth[domain]",
        "auth[server_endpoint]",
        "auth[status]",
        "auth[client_endpoint]",
        "auth[member_id]",
        "auth[user_id]",
        "auth[application_token]",
    }
    assert added["auth[application_token]"] == emu.application_token
    assert added["event_handler_id"].isdigit()
    # The auth block is the acting employee's (the binding has no auth_type) and its token works
    assert added["auth[user_id]"] == "2"
    assert call(emu, "profile", added["auth[access_token]"]).json()["result"]["ID"] == "2"
    log = emu.events()["deliveries"]
    assert [(d["event"], d["status"]) for d in log] == [("ONCRMLEADADD", 500), ("ONCRMLEADDELETE", 500)]
    assert added["auth[access_token]"] not in json.dumps(admin(emu, "GET", "/events").json())


def test_every_bound_row_gets_its_copy_with_the_same_ts(emu: Emulator, app: FakeApp) -> None:
    # Given ONCRMLEADADD bound twice to one handler: by an administrator and by an employee (two rows,
    # docs/bitrix24-facts.md#f-bind-7)
    call(emu, "event.bind", _token(emu, 1), event="ONCRMLEADADD", handler=app.url)
    call(emu, "event.bind", _token(emu, 2), event="ONCRMLEADADD", handler=app.url)

    # When a lead is added
    lead_id = call(emu, "crm.lead.add", _token(emu, 2), fields={"TITLE": "Twice"}).json()["result"]
    assert emu.flush_events(10)

    # Then each row delivers once: different event_handler_id, the same event, lead and ts (#f-events-9, #f-events-12)
    first, second = app.forms("ONCRMLEADADD")
    assert first["event_handler_id"] != second["event_handler_id"]
    assert first["data[FIELDS][ID]"] == second["data[FIELDS][ID]"] == str(lead_id)
    assert first["ts"] == second["ts"]
    assert first["auth[application_token]"] == second["auth[application_token]"] == emu.application_token


def test_a_binding_with_auth_type_carries_that_users_token(emu: Emulator, app: FakeApp) -> None:
    call(emu, "event.bind", _token(emu, 1), event="ONCRMLEADUPDATE", handler=app.url, auth_type=3)
    lead_id = emu.state.leads.ids()[0]

    call(emu, "crm.lead.update", _token(emu, 2), id=lead_id, fields={"TITLE": "x"})
    assert emu.flush_events(10)

    (update,) = app.forms("ONCRMLEADUPDATE")
    assert update["auth[user_id]"] == "3"
    assert update["data[FIELDS][ID]"] == str(lead_id)


def test_no_events_while_a_ui_install_is_unfinished(emu: Emulator, app: FakeApp) -> None:
    call(emu, "event.bind", _token(emu, 1), event="ONCRMLEADADD", handler=app.url)
    emu.install(user_id=1)  # a UI app: pending until BX24.installFinish()

    call(emu, "crm.lead.add", _token(emu, 1), fields={"TITLE": "before finish"})
    emu.install_finish()
    call(emu, "crm.lead.add", _token(emu, 1), fields={"TITLE": "after finish"})
    assert emu.flush_events(10)

    assert len(app.forms("ONCRMLEADADD")) == 1


def test_lead_update_refuses_bad_input(emu: Emulator) -> None:
    token = _token(emu, 1)
    missing = call(emu, "crm.lead.update", token, id=10**9, fields={"TITLE": "x"})
    assert missing.status_code == 400
    assert missing.json() == {"error": "", "error_description": "Not found"}
    assert call(emu, "crm.lead.update", token, id=1).status_code == 400
    assert call(emu, "crm.lead.update", token, id=1, fields={"OPPORTUNITY": "abc"}).status_code == 400


def test_the_portal_session_cookie_decides_who_approves(emu: Emulator) -> None:
    # Given a browser logged in to the portal as user 2 (GET /_emu/login sets the session cookie)
    import requests

    browser = requests.Session()
    login = browser.get(f"{emu.admin_url}/login", params={"user_id": 2}, allow_redirects=False, timeout=5)
    assert login.status_code == 302
    # When it opens the authorize page, the code it gets is user 2's
    emu.configure(redirect_uri="http://127.0.0.1:9/callback")
    answer = browser.get(
        emu.authorize_url, params={"client_id": emu.client_id, "state": "s"}, allow_redirects=False, timeout=5
    )
    assert answer.status_code == 302
    code = answer.headers["Location"].split("code=", 1)[1].split("&", 1)[0]
    spent = token_request(emu, grant_type="authorization_code", code=code)
    assert spent.status_code == 200, spent.text
    (chain,) = [c for c in emu.tokens() if c["access_token"] == spent.json()["access_token"]]
    assert chain["user_id"] == 2
    # And a session naming an unknown user is refused, not approved as someone else
    browser.cookies.clear()
    browser.cookies.set("b24_emulator_user", "99")
    refused = browser.get(
        emu.authorize_url, params={"client_id": emu.client_id, "state": "s"}, allow_redirects=False, timeout=5
    )
    assert refused.status_code == 400
