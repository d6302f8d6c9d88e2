"""Install payload parsing and the Installer (app.info verification, replay, uninstall) with fakes."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from b24connector.bitrix24.errors import OAuthTransientError
from b24connector.install import (
    Installer,
    parse_install_event,
    parse_install_page,
    parse_uninstall_event,
)
from b24connector.portals import PortalPolicy
from b24connector.problems import Problem, ProblemKind
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from b24connector.vault.errors import VaultUnavailable
from tests.unit.handlers.fakes import CLIENT_ID, Clock, FakeOAuth, FakeStore

PORTAL = "acme.bitrix24.com"
MEMBER = "a223c6b3710f85df22e9377d6c4f7553"
APP_TOKEN = "51856fefc120afa4b628cc82d3935cce"
APP_TOKEN_HASH = hashlib.sha256(APP_TOKEN.encode()).hexdigest()
POLICY = PortalPolicy(DEFAULT_PORTAL_SUFFIXES)


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.oauth = FakeOAuth(self.clock)
        self.store = FakeStore()
        self.installer = Installer(POLICY, self.oauth, self.store, client_id=CLIENT_ID, clock=self.clock)

    def page(self, **form_overrides: Any) -> tuple[dict[str, str], dict[str, str]]:
        tokens = self.oauth.new_tokens(MEMBER, PORTAL)
        query = {
            "DOMAIN": PORTAL,
            "PROTOCOL": "1",
            "LANG": "en",
            "APP_SID": "dd8cec11e347088fe87c44870a9f1dba",
        }
        form = {
            "AUTH_ID": tokens.access_token,
            "AUTH_EXPIRES": "3600",
            "REFRESH_ID": tokens.refresh_token,
            "SERVER_ENDPOINT": "https://oauth.bitrix.info/rest/",
            "APPLICATION_TOKEN": APP_TOKEN,
            "APPLICATION_SCOPE": "crm,user",
            "member_id": MEMBER,
            "status": "L",
            "PLACEMENT": "DEFAULT",
        }
        form.update(form_overrides)
        return query, {k: v for k, v in form.items() if v is not None}

    def event(self, **auth_overrides: Any) -> dict[str, Any]:
        tokens = self.oauth.new_tokens(MEMBER, PORTAL)
        auth = {
            "access_token": tokens.access_token,
            "expires": str(int(self.clock()) + 3600),
            "expires_in": "3600",
            "scope": "crm,user",
            "domain": PORTAL,
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "status": "L",
            "client_endpoint": f"https://{PORTAL}/rest/",
            "member_id": MEMBER,
            "user_id": "1",
            "refresh_token": tokens.refresh_token,
            "application_token": APP_TOKEN,
        }
        auth.update(auth_overrides)
        return {
            "event": "ONAPPINSTALL",
            "data": {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"},
            "ts": "1696527000",
            "auth": {k: v for k, v in auth.items() if v is not None},
        }


def problem_of(action: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        action()
    return caught.value


# --- parsing ------------------------------------------------------------------------------------


def test_install_page_is_parsed() -> None:
    world = World()
    query, form = world.page()
    grant = parse_install_page(query, form, POLICY, now=world.clock())
    assert grant.domain == PORTAL
    assert grant.tokens.member_id == MEMBER
    assert grant.tokens.expires_at == int(world.clock()) + 3600  # AUTH_EXPIRES is a lifetime, not a time
    assert grant.application_token == APP_TOKEN
    assert grant.server_hint == "https://oauth.bitrix.info/rest/"
    assert grant.from_page
    assert form["AUTH_ID"] not in repr(grant)
    assert form["REFRESH_ID"] not in repr(grant)
    assert APP_TOKEN not in repr(grant)


def test_older_portals_may_omit_server_endpoint_token_and_scope() -> None:
    world = World()
    query, form = world.page(SERVER_ENDPOINT=None, APPLICATION_TOKEN=None, APPLICATION_SCOPE=None)
    grant = parse_install_page(query, form, POLICY, now=world.clock())
    assert (grant.server_hint, grant.application_token) == (None, None)


@pytest.mark.parametrize(
    ("query_change", "form_change", "reason"),
    [
        ({"DOMAIN": None}, {}, "domain_missing"),
        ({"DOMAIN": "evil.example.com"}, {}, "domain_invalid"),
        ({}, {"AUTH_ID": None}, "auth_id_missing"),
        ({}, {"REFRESH_ID": None}, "refresh_id_missing"),
        ({}, {"member_id": None}, "member_id_missing"),
        ({}, {"member_id": "../x"}, "member_id_invalid"),
        ({}, {"AUTH_EXPIRES": None}, "auth_expires_missing"),
        ({}, {"AUTH_EXPIRES": "soon"}, "auth_expires_invalid"),
        ({}, {"AUTH_EXPIRES": "0"}, "auth_expires_invalid"),
        ({}, {"AUTH_EXPIRES": "1780319382"}, "auth_expires_invalid"),
        ({}, {"AUTH_ID": "has space"}, "auth_id_invalid"),
        ({}, {"PLACEMENT_OPTIONS": "{not json"}, "placement_options_invalid"),
        ({}, {"status": "free"}, "status_invalid"),
    ],
)
def test_bad_install_pages(query_change: dict[str, Any], form_change: dict[str, Any], reason: str) -> None:
    world = World()
    query, form = world.page(**form_change)
    query = {k: v for k, v in {**query, **query_change}.items() if v is not None}
    problem = problem_of(lambda: parse_install_page(query, form, POLICY, now=world.clock()))
    assert (problem.kind, problem.reason) == (ProblemKind.INVALID, reason)


def test_install_event_is_parsed_with_string_values_and_extra_fields() -> None:
    world = World()
    payload = world.event()
    payload["event_handler_id"] = "1"
    payload["auth"]["unexpected"] = "tolerated"
    grant = parse_install_event(payload, POLICY, now=world.clock())
    assert grant.tokens.user_id == 1
    assert grant.tokens.expires_at == int(payload["auth"]["expires"])
    assert grant.claimed_client_endpoint == f"https://{PORTAL}/rest/"
    assert not grant.from_page


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"access_token": None}, "access_token_missing"),
        ({"refresh_token": None}, "refresh_token_missing"),
        ({"application_token": None}, "application_token_missing"),
        ({"member_id": None}, "member_id_missing"),
        ({"domain": None}, "domain_missing"),
        ({"domain": "127.0.0.1"}, "domain_invalid"),
        ({"expires": "tomorrow"}, "auth_expires_invalid"),
        ({"expires": None, "expires_in": None}, "tokens_invalid"),
        ({"user_id": "root"}, "auth_user_id_invalid"),
    ],
)
def test_bad_install_events(change: dict[str, Any], reason: str) -> None:
    world = World()
    payload = world.event(**change)
    assert problem_of(lambda: parse_install_event(payload, POLICY, now=world.clock())).reason == reason


def test_events_without_an_auth_block_are_refused() -> None:
    assert (
        problem_of(lambda: parse_install_event({"event": "ONAPPINSTALL"}, POLICY, now=0)).reason
        == "auth_missing"
    )
    assert problem_of(lambda: parse_uninstall_event({"auth": "x"})).reason == "auth_missing"


@pytest.mark.parametrize(("clean", "expected"), [("1", True), ("0", False), (None, False)])
def test_uninstall_event_is_parsed(clean: str | None, expected: bool) -> None:
    payload: dict[str, Any] = {
        "event": "ONAPPUNINSTALL",
        "auth": {"member_id": MEMBER, "application_token": APP_TOKEN},
    }
    if clean is not None:
        payload["data"] = {"LANGUAGE_ID": "de", "CLEAN": clean}
    notice = parse_uninstall_event(payload)
    assert (notice.member_id, notice.clean) == (MEMBER, expected)
    assert APP_TOKEN not in repr(notice)


# --- installer ----------------------------------------------------------------------------------


def test_install_page_verifies_with_app_info_and_stores() -> None:
    world = World()
    query, form = world.page()
    installed = world.installer.install(parse_install_page(query, form, POLICY, now=world.clock()))
    assert installed.stored
    assert world.oauth.app_info_calls == [form["AUTH_ID"]]
    stored = world.store.portals[MEMBER]
    assert stored.application_token_hash == APP_TOKEN_HASH
    assert stored.tokens is not None
    assert stored.tokens.client_endpoint == f"https://{PORTAL}/rest/"
    assert stored.tokens.server_endpoint == "https://oauth.bitrix.info/rest/"


def test_a_replayed_grant_changes_nothing() -> None:
    world = World()
    payload = world.event()
    first = world.installer.install(parse_install_event(payload, POLICY, now=world.clock()))
    again = world.installer.install(parse_install_event(payload, POLICY, now=world.clock()))
    assert (first.version, again.version) == (1, 1)
    assert world.store.writes == 1


def test_an_install_page_does_not_replace_an_active_grant_of_an_installed_app() -> None:
    # Given the app is installed and its grant stored
    world = World()
    world.installer.install(parse_install_event(world.event(), POLICY, now=world.clock()))
    original = world.store.portals[MEMBER].tokens
    # When a user opens the app's page (same URL) with their own fresh tokens
    query, form = world.page()
    outcome = world.installer.install(parse_install_page(query, form, POLICY, now=world.clock()))
    # Then the stored grant stays
    assert not outcome.stored
    assert world.store.portals[MEMBER].tokens is original


def test_an_install_page_replaces_the_grant_of_an_uninstalled_portal() -> None:
    world = World()
    world.installer.install(parse_install_event(world.event(), POLICY, now=world.clock()))
    world.store.mark_uninstalled(MEMBER, clean=False)
    query, form = world.page()
    assert world.installer.install(parse_install_page(query, form, POLICY, now=world.clock())).stored
    assert world.store.portals[MEMBER].is_active


def test_older_portals_use_the_default_server_and_keep_the_stored_application_token() -> None:
    world = World()
    world.installer.install(parse_install_event(world.event(), POLICY, now=world.clock()))
    world.store.portals[MEMBER].health = "needs_reauth"
    query, form = world.page(SERVER_ENDPOINT=None, APPLICATION_TOKEN=None)
    world.installer.install(parse_install_page(query, form, POLICY, now=world.clock()))
    stored = world.store.portals[MEMBER]
    assert stored.application_token_hash == APP_TOKEN_HASH
    assert stored.tokens is not None
    assert stored.tokens.server_endpoint == "https://oauth.bitrix.info/rest/"


def _install_with(world: World, mutate_info: dict[str, Any] | None = None, **auth: Any) -> Problem:
    payload = world.event(**auth)
    if mutate_info:
        token = payload["auth"]["access_token"]
        world.oauth.live_tokens[token] = replace(world.oauth.live_tokens[token], **mutate_info)
    grant = parse_install_event(payload, POLICY, now=world.clock())
    return problem_of(lambda: world.installer.install(grant))


@pytest.mark.parametrize(
    ("info", "auth", "reason"),
    [
        ({"client_id": "local.other.app"}, {}, "client_mismatch"),
        ({"member_id": "ffffffffffffffffffffffffffffffff"}, {}, "member_mismatch"),
        ({"domain": "other.bitrix24.com"}, {}, "domain_mismatch"),
        ({"domain": ""}, {}, "domain_mismatch"),
        ({"client_endpoint": "https://other.bitrix24.com/rest/"}, {}, "endpoint_mismatch"),
        ({"client_endpoint": "http://acme.bitrix24.com/rest/"}, {}, "endpoint_mismatch"),
        ({}, {"client_endpoint": "https://evil.bitrix24.com/rest/"}, "endpoint_mismatch"),
        ({}, {"server_endpoint": "https://evil.example.com/rest/"}, "server_not_allowed"),
    ],
)
def test_claims_app_info_does_not_confirm_are_forbidden(
    info: dict[str, Any], auth: dict[str, Any], reason: str
) -> None:
    world = World()
    problem = _install_with(world, info, **auth)
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, reason)
    assert world.store.portals == {}


def test_a_token_the_oauth_server_does_not_know_is_forbidden() -> None:
    world = World()
    payload = world.event()
    world.oauth.live_tokens.clear()
    grant = parse_install_event(payload, POLICY, now=world.clock())
    problem = problem_of(lambda: world.installer.install(grant))
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "token_rejected")
    assert world.store.portals == {}


def test_oauth_server_down_is_unavailable() -> None:
    world = World()
    world.oauth.fail_app_info = OAuthTransientError("CONNECTION_ERROR", "down")
    grant = parse_install_event(world.event(), POLICY, now=world.clock())
    problem = problem_of(lambda: world.installer.install(grant))
    assert (problem.kind, problem.reason) == (ProblemKind.UNAVAILABLE, "oauth_unavailable")


def test_storage_down_is_unavailable() -> None:
    world = World()
    grant = parse_install_event(world.event(), POLICY, now=world.clock())
    world.store.fail = VaultUnavailable("x")
    assert problem_of(lambda: world.installer.install(grant)).kind is ProblemKind.UNAVAILABLE


def test_genuine_uninstall_marks_and_clean_forgets() -> None:
    world = World()
    world.installer.install(parse_install_event(world.event(), POLICY, now=world.clock()))
    payload = {
        "event": "ONAPPUNINSTALL",
        "data": {"CLEAN": "1"},
        "auth": {"member_id": MEMBER, "application_token": APP_TOKEN},
    }
    world.installer.uninstall(parse_uninstall_event(payload))
    stored = world.store.portals[MEMBER]
    assert (stored.health, stored.tokens, stored.application_token_hash) == ("uninstalled", None, None)


@pytest.mark.parametrize(
    ("member_id", "token"),
    [(MEMBER, "0" * 32), (MEMBER, APP_TOKEN[:-1]), ("ffffffffffffffffffffffffffffffff", APP_TOKEN)],
)
def test_forged_uninstall_is_forbidden_and_changes_nothing(member_id: str, token: str) -> None:
    world = World()
    world.installer.install(parse_install_event(world.event(), POLICY, now=world.clock()))
    writes = world.store.writes
    notice = parse_uninstall_event({"auth": {"member_id": member_id, "application_token": token}})
    problem = problem_of(lambda: world.installer.uninstall(notice))
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "application_token_mismatch")
    assert world.store.writes == writes
    assert world.store.portals[MEMBER].is_active


def test_the_stored_verifier_itself_does_not_authenticate_an_uninstall() -> None:
    # Given someone who could read the table: they know the SHA-256, not the application_token
    world = World()
    world.installer.install(parse_install_event(world.event(), POLICY, now=world.clock()))
    verifier = world.store.portals[MEMBER].application_token_hash
    assert verifier == APP_TOKEN_HASH
    # When they send the verifier as the token
    notice = parse_uninstall_event({"auth": {"member_id": MEMBER, "application_token": verifier}})
    problem = problem_of(lambda: world.installer.uninstall(notice))
    # Then the uninstall is refused: the received token is hashed before the comparison
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "application_token_mismatch")
    assert world.store.portals[MEMBER].is_active


def test_uninstall_of_a_portal_without_a_stored_application_token_is_forbidden() -> None:
    world = World()
    world.store.portals[MEMBER] = world.store.save_grant(
        world.oauth.new_tokens(MEMBER, PORTAL), domain=PORTAL
    )
    notice = parse_uninstall_event({"auth": {"member_id": MEMBER, "application_token": APP_TOKEN}})
    assert problem_of(lambda: world.installer.uninstall(notice)).kind is ProblemKind.FORBIDDEN
    assert world.store.portals[MEMBER].is_active
