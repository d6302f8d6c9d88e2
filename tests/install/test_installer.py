"""Install payload parsing and the Installer (verification, grant ranks, journal, uninstall) with fakes."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from b24connector.bitrix24.errors import OAuthTransientError
from b24connector.install import (
    Installer,
    Outcome,
    event_of,
    notice_of,
    parse_install_event,
    parse_install_page,
    parse_uninstall_event,
)
from b24connector.portals import PortalPolicy
from b24connector.problems import Problem, ProblemKind
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from b24connector.vault.errors import VaultUnavailable
from tests.support.use_case_fakes import CLIENT_ID, Clock, FakeJournal, FakeOAuth, FakeRoles, FakeStore

PORTAL = "acme.bitrix24.com"
MEMBER = "a223c6b3710f85df22e9377d6c4f7553"
APP_TOKEN = "51856fefc120afa4b628cc82d3935cce"
APP_TOKEN_HASH = hashlib.sha256(APP_TOKEN.encode()).hexdigest()
POLICY = PortalPolicy(DEFAULT_PORTAL_SUFFIXES)


class FakeRemoval:
    """RemovalProbe: what Bitrix24 says about the app, through the stored grant."""

    def __init__(self) -> None:
        self.removed: bool | Exception = False
        self.asked = 0

    def app_removed(self, member_id: str) -> bool:
        self.asked += 1
        if isinstance(self.removed, Exception):
            raise self.removed
        return self.removed


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.oauth = FakeOAuth(self.clock)
        self.store = FakeStore()
        self.journal = FakeJournal()
        self.roles = FakeRoles(self.oauth)
        self.removal = FakeRemoval()
        self.installer = Installer(
            POLICY,
            self.oauth,
            self.store,
            client_id=CLIENT_ID,
            journal=self.journal,
            roles=self.roles,
            removal=self.removal,
            clock=self.clock,
        )

    def page(self, *, admin: bool = True, **form_overrides: Any) -> tuple[dict[str, str], dict[str, str]]:
        tokens = self.oauth.new_tokens(MEMBER, PORTAL, admin=admin)
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

    def auth_block(self, *, admin: bool = True, **overrides: Any) -> dict[str, Any]:
        tokens = self.oauth.new_tokens(MEMBER, PORTAL, admin=admin)
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
        auth.update(overrides)
        return {k: v for k, v in auth.items() if v is not None}

    def event(self, *, admin: bool = True, **auth_overrides: Any) -> dict[str, Any]:
        return {
            "event": "ONAPPINSTALL",
            "data": {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"},
            "ts": "1696527000",
            "auth": self.auth_block(admin=admin, **auth_overrides),
        }

    def user_ready(self, *, installer_admin: bool = True, **auth_overrides: Any) -> dict[str, Any]:
        """ONAPPUSERREADY as the docs show it: the system user's pair in data, the installer's in auth."""
        system = self.oauth.new_tokens(MEMBER, PORTAL, admin=False, user_id=77)
        data = {
            "access_token": system.access_token,
            "refresh_token": system.refresh_token,
            "expires_in": "3600",
            "scope": "crm,user",
            "domain": "oauth.bitrix.info",
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "client_endpoint": f"https://{PORTAL}/rest/",
            "member_id": MEMBER,
            "user_id": "77",
            "client_id": CLIENT_ID,
            "status": "F",
            "LANGUAGE_ID": "en",
        }
        auth = self.auth_block(admin=installer_admin, domain="oauth.bitrix.info", **auth_overrides)
        return {"event": "ONAPPUSERREADY", "event_handler_id": "3", "ts": "1", "data": data, "auth": auth}

    def apply(self, payload: dict[str, Any]) -> Any:
        """What LifecycleFunction does with an accepted event: the journal round trip, then apply."""
        self.installer.accept(parse_install_event(payload, POLICY, now=self.clock()))
        job = self.journal.jobs.pop()
        return self.installer.apply(event_of(job))

    def install_admin_event(self) -> None:
        assert self.apply(self.event()).outcome is Outcome.STORED
        self.journal.jobs.clear()


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
    event = parse_install_event(payload, POLICY, now=world.clock())
    grant = event.grant
    assert grant.tokens.user_id == 1
    assert grant.tokens.expires_at == int(payload["auth"]["expires"])
    assert grant.claimed_client_endpoint == f"https://{PORTAL}/rest/"
    assert event.application_token == APP_TOKEN


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
        ({"expires": None, "expires_in": None}, "auth_expires_in_invalid"),
        ({"user_id": "root"}, "auth_user_id_invalid"),
        # Unicode digits pass str.isdigit() but not int(): refused, never a 500.
        ({"expires": "\u00b2"}, "auth_expires_invalid"),
        ({"expires": None, "expires_in": "\u0663"}, "auth_expires_in_invalid"),
        ({"user_id": "9" * 5000}, "auth_user_id_invalid"),
        ({"expires": "9" * 30}, "auth_expires_invalid"),
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


def test_onappuserready_is_parsed_with_the_portal_from_client_endpoint() -> None:
    # Both blocks name the OAuth server in `domain` (docs/bitrix24-facts.md): the portal is the endpoint's.
    world = World()
    event = parse_install_event(world.user_ready(), POLICY, now=world.clock())
    assert (event.name, event.grant.domain, event.member_id) == ("ONAPPUSERREADY", PORTAL, MEMBER)
    assert event.grant.tokens.user_id == 77
    assert event.installer is not None
    assert event.installer.tokens.user_id == 1
    assert event.application_token == APP_TOKEN


def test_deep_placement_options_are_refused_before_parsing() -> None:
    world = World()
    query, form = world.page(PLACEMENT_OPTIONS="[" * 40_000)
    problem = problem_of(lambda: parse_install_page(query, form, POLICY, now=world.clock()))
    assert problem.reason == "placement_options_invalid"


# --- one-shot events: journal first -------------------------------------------------------------


def test_an_install_event_is_journaled_before_any_network_call() -> None:
    # Given an ONAPPINSTALL
    world = World()
    payload = world.event()
    # When it is accepted
    world.installer.accept(parse_install_event(payload, POLICY, now=world.clock()))
    # Then one journal entry holds it and nothing asked Bitrix24 or wrote the portal yet
    assert world.journal.kinds() == ["grant"]
    assert (world.oauth.app_info_calls, world.store.writes, world.roles.calls) == ([], 0, 0)
    job = world.journal.jobs[0]
    assert payload["auth"]["access_token"] not in repr(job)
    assert payload["auth"]["refresh_token"] not in str(job.facts)


def test_an_unwritable_journal_is_unavailable() -> None:
    world = World()
    world.journal.fail = VaultUnavailable("SQS down")
    event = parse_install_event(world.event(), POLICY, now=world.clock())
    problem = problem_of(lambda: world.installer.accept(event))
    assert (problem.kind, problem.reason) == (ProblemKind.UNAVAILABLE, "journal_unavailable")


def test_an_administrators_install_event_is_verified_stored_and_subscribed() -> None:
    world = World()
    installed = world.apply(world.event())
    assert (installed.outcome, installed.role) == (Outcome.STORED, "admin")
    stored = world.store.portals[MEMBER]
    assert stored.application_token_hash == APP_TOKEN_HASH
    assert stored.grant_role == "admin"
    assert stored.tokens is not None
    assert stored.tokens.client_endpoint == f"https://{PORTAL}/rest/"
    assert world.journal.kinds() == ["subscribe"]


def test_a_replayed_install_event_changes_nothing() -> None:
    world = World()
    payload = world.event()
    world.apply(payload)
    world.apply(payload)
    assert world.store.writes == 1
    assert world.store.portals[MEMBER].version == 1


def test_an_employees_forged_install_event_changes_nothing() -> None:
    # Given a portal installed by its administrator
    world = World()
    world.install_admin_event()
    before = replace(world.store.portals[MEMBER])
    # When an employee posts an ONAPPINSTALL with their own pair from the app frame and a token of their choice
    installed = world.apply(world.event(admin=False, application_token="f" * 32))
    # Then it is refused: neither their pair nor their application token is stored
    assert installed.outcome is Outcome.REFUSED
    assert world.store.portals[MEMBER] == before
    assert world.store.portals[MEMBER].application_token_hash == APP_TOKEN_HASH


def test_an_employees_application_token_is_never_stored() -> None:
    # Given a portal nobody holds yet, an employee's pair may become its grant, but not its uninstall proof
    world = World()
    installed = world.apply(world.event(admin=False))
    assert (installed.outcome, installed.role) == (Outcome.STORED, "user")
    assert world.store.portals[MEMBER].application_token_hash is None


def test_a_late_event_is_verified_through_its_refresh_token_and_journaled_again() -> None:
    # Given an ONAPPINSTALL that arrives after its access token expired
    world = World()
    payload = world.event()
    world.oauth.expired.add(payload["auth"]["access_token"])
    # When it is applied
    first = world.apply(payload)
    # Then its refresh token was spent once and the renewed pair journaled before anything else
    assert first.outcome is Outcome.REJOURNALED
    assert world.oauth.refreshes == [payload["auth"]["refresh_token"]]
    assert world.store.writes == 0
    renewed = world.journal.jobs.pop()
    assert renewed.secrets["grant.refresh"] != payload["auth"]["refresh_token"]
    # And the renewed entry applies like any other
    assert world.installer.apply(event_of(renewed)).outcome is Outcome.STORED
    assert world.store.portals[MEMBER].application_token_hash == APP_TOKEN_HASH


def test_a_late_event_whose_refresh_token_is_dead_is_refused() -> None:
    world = World()
    payload = world.event()
    world.oauth.expired.add(payload["auth"]["access_token"])
    world.oauth.issued_refresh.clear()
    problem = problem_of(lambda: world.apply(payload))
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "token_rejected")
    assert world.store.portals == {}


def test_bitrix24_down_leaves_the_event_for_a_retry() -> None:
    world = World()
    world.oauth.fail_app_info = OAuthTransientError("CONNECTION_ERROR", "down")
    with pytest.raises(OAuthTransientError):
        world.apply(world.event())
    assert world.store.portals == {}


def test_user_admin_unanswered_leaves_the_event_for_a_retry() -> None:
    world = World()
    world.roles.fail = OAuthTransientError("TIMEOUT", "slow")
    with pytest.raises(OAuthTransientError):
        world.apply(world.event())
    assert world.store.portals == {}


def test_storage_down_is_unavailable() -> None:
    world = World()
    world.store.fail = VaultUnavailable("x")
    world.installer.accept(parse_install_event(world.event(), POLICY, now=world.clock()))
    event = event_of(world.journal.jobs.pop())
    assert problem_of(lambda: world.installer.apply(event)).kind is ProblemKind.UNAVAILABLE


def _install_with(world: World, mutate_info: dict[str, Any] | None = None, **auth: Any) -> Problem:
    payload = world.event(**auth)
    if mutate_info:
        token = payload["auth"]["access_token"]
        world.oauth.live_tokens[token] = replace(world.oauth.live_tokens[token], **mutate_info)
    return problem_of(lambda: world.apply(payload))


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
    problem = problem_of(lambda: world.apply(payload))
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "token_rejected")
    assert world.store.portals == {}


# --- ONAPPUSERREADY -----------------------------------------------------------------------------


def test_onappuserready_makes_the_system_user_the_portals_grant() -> None:
    # Given a portal connected by an employee
    world = World()
    world.apply(world.event(admin=False))
    # When the Market app's ONAPPUSERREADY arrives (installer pair of an administrator)
    installed = world.apply(world.user_ready())
    # Then the system user's pair is the grant, with the application token
    stored = world.store.portals[MEMBER]
    assert (installed.outcome, stored.grant_role) == (Outcome.STORED, "system")
    assert stored.tokens is not None
    assert stored.tokens.user_id == 77
    assert stored.application_token_hash == APP_TOKEN_HASH


def test_onappuserready_replaces_an_administrators_grant_and_is_not_replaced_by_one() -> None:
    world = World()
    world.install_admin_event()
    world.apply(world.user_ready())
    assert world.store.portals[MEMBER].grant_role == "system"
    assert world.apply(world.event()).outcome is Outcome.REFUSED
    assert world.store.portals[MEMBER].grant_role == "system"


def test_a_forged_onappuserready_is_not_a_system_grant() -> None:
    # Given an administrator's grant
    world = World()
    world.install_admin_event()
    # When an employee forges ONAPPUSERREADY from their own pairs and a token of their choice
    installed = world.apply(world.user_ready(installer_admin=False, application_token="e" * 32))
    # Then nothing proves the event genuine: the data pair ranks as an employee's and is refused
    assert installed.outcome is Outcome.REFUSED
    assert world.store.portals[MEMBER].grant_role == "admin"


# --- install page -------------------------------------------------------------------------------


def test_install_page_verifies_with_app_info_and_stores() -> None:
    world = World()
    query, form = world.page()
    installed = world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock()))
    assert installed.stored
    assert world.oauth.app_info_calls == [form["AUTH_ID"]]
    stored = world.store.portals[MEMBER]
    assert stored.application_token_hash == APP_TOKEN_HASH
    assert stored.tokens is not None
    assert stored.tokens.client_endpoint == f"https://{PORTAL}/rest/"
    assert stored.tokens.server_endpoint == "https://oauth.bitrix.info/rest/"
    assert world.journal.kinds() == ["subscribe"]


def test_an_install_page_does_not_replace_an_active_grant_of_an_installed_app() -> None:
    # Given the app is installed and its grant stored
    world = World()
    world.install_admin_event()
    original = world.store.portals[MEMBER].tokens
    # When any user opens the app's page (same URL) with their own fresh tokens
    for admin in (False, True):
        query, form = world.page(admin=admin)
        outcome = world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock()))
        # Then the stored grant stays
        assert outcome.outcome is Outcome.KEPT
        assert world.store.portals[MEMBER].tokens is original


def test_an_administrators_install_page_replaces_an_employees_grant() -> None:
    world = World()
    world.apply(world.event(admin=False))
    query, form = world.page()
    installed = world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock()))
    assert (installed.outcome, world.store.portals[MEMBER].grant_role) == (Outcome.STORED, "admin")


def test_an_employees_install_page_before_install_finished_is_refused() -> None:
    world = World()
    world.install_admin_event()
    query, form = world.page(admin=False)
    world.oauth.live_tokens[form["AUTH_ID"]] = replace(
        world.oauth.live_tokens[form["AUTH_ID"]], installed=False
    )
    installed = world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock()))
    assert installed.outcome is Outcome.REFUSED
    assert world.store.portals[MEMBER].grant_role == "admin"


def test_an_install_page_replaces_the_grant_of_an_uninstalled_portal() -> None:
    world = World()
    world.install_admin_event()
    world.store.mark_uninstalled(MEMBER, clean=False)
    query, form = world.page(admin=False)
    assert world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock())).stored
    assert world.store.portals[MEMBER].is_active


def test_older_portals_use_the_default_server_and_keep_the_stored_application_token() -> None:
    world = World()
    world.install_admin_event()
    world.store.portals[MEMBER].health = "needs_reauth"
    query, form = world.page(SERVER_ENDPOINT=None, APPLICATION_TOKEN=None)
    world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock()))
    stored = world.store.portals[MEMBER]
    assert stored.application_token_hash == APP_TOKEN_HASH
    assert stored.tokens is not None
    assert stored.tokens.server_endpoint == "https://oauth.bitrix.info/rest/"


def test_an_expired_install_page_token_is_refused() -> None:
    world = World()
    query, form = world.page()
    world.oauth.expired.add(form["AUTH_ID"])
    grant = parse_install_page(query, form, POLICY, now=world.clock())
    assert problem_of(lambda: world.installer.install_page(grant)).reason == "token_rejected"
    assert world.oauth.refreshes == []


# --- uninstall ----------------------------------------------------------------------------------


def _uninstall(member_id: str = MEMBER, token: str = APP_TOKEN, clean: str = "1") -> Any:
    return parse_uninstall_event(
        {
            "event": "ONAPPUNINSTALL",
            "data": {"CLEAN": clean},
            "auth": {"member_id": member_id, "application_token": token},
        }
    )


def test_an_uninstall_of_an_uninstalled_portal_changes_nothing() -> None:
    world = World()
    world.install_admin_event()
    world.store.mark_uninstalled(MEMBER, clean=False)
    writes = world.store.writes
    assert world.installer.uninstall(_uninstall()) is Outcome.UNINSTALLED
    assert (world.store.writes, world.journal.jobs) == (writes, [])


# The real token too: an employee can read it from the app frame, so it proves nothing by itself
@pytest.mark.parametrize(
    "token",
    [APP_TOKEN, "0" * 32, APP_TOKEN[:-1], APP_TOKEN_HASH],
    ids=["real-token", "random", "token-prefix", "stored-verifier"],
)
def test_an_unproven_uninstall_changes_nothing_and_is_checked_with_bitrix24(token: str) -> None:
    # Given an installed portal (the stored verifier itself is not the token: it is hashed again)
    world = World()
    world.install_admin_event()
    writes = world.store.writes
    # When an uninstall arrives, with the real application token or any other
    outcome = world.installer.uninstall(_uninstall(token=token))
    # Then nothing changes yet; a check with Bitrix24 is journaled
    assert outcome is Outcome.UNINSTALL_QUEUED
    assert world.store.writes == writes
    assert world.store.portals[MEMBER].is_active
    job = world.journal.jobs.pop()
    assert (job.kind, token in repr(job)) == ("uninstall", False)
    # And when Bitrix24 says the app is still installed, it is refused for good
    problem = problem_of(lambda: world.installer.confirm_uninstall(notice_of(job)))
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "uninstall_not_confirmed")
    assert world.store.writes == writes
    assert world.store.portals[MEMBER].is_active


def test_an_uninstall_without_a_stored_token_is_applied_once_bitrix24_confirms_it() -> None:
    # Given a legacy install page (no APPLICATION_TOKEN): nothing can prove an uninstall by token
    world = World()
    query, form = world.page(APPLICATION_TOKEN=None)
    world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock()))
    assert world.installer.uninstall(_uninstall(clean="0")) is Outcome.UNINSTALL_QUEUED
    # When Bitrix24, asked with the stored grant, says the app is gone
    world.removal.removed = True
    outcome = world.installer.confirm_uninstall(notice_of(world.journal.jobs.pop()))
    # Then the uninstall is applied (CLEAN=0 keeps the record's facts)
    assert outcome is Outcome.UNINSTALLED
    assert (world.store.portals[MEMBER].health, world.store.portals[MEMBER].domain) == ("uninstalled", PORTAL)


def test_an_uninstall_check_is_throttled_per_portal() -> None:
    world = World()
    world.install_admin_event()
    world.store.uninstall_checks_allowed = False
    with pytest.raises(VaultUnavailable):
        world.installer.confirm_uninstall(notice_of(uninstall_job_of(world)))
    assert world.removal.asked == 0


def uninstall_job_of(world: World) -> Any:
    world.installer.uninstall(_uninstall(token="1" * 32))
    return world.journal.jobs.pop()


def test_bitrix24_unable_to_confirm_leaves_the_check_for_a_retry() -> None:
    world = World()
    world.install_admin_event()
    world.removal.removed = OAuthTransientError("TIMEOUT", "slow")
    with pytest.raises(OAuthTransientError):
        world.installer.confirm_uninstall(notice_of(uninstall_job_of(world)))
    assert world.store.portals[MEMBER].is_active


def test_uninstall_of_an_unknown_portal_is_forbidden() -> None:
    world = World()
    problem = problem_of(lambda: world.installer.uninstall(_uninstall(member_id="f" * 32)))
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "portal_unknown")
    assert world.journal.jobs == []


def test_clean_is_honoured_only_from_a_notice_with_the_stored_token() -> None:
    # Given a portal with a stored application token, uninstalled by its administrator with "keep data"
    world = World()
    world.install_admin_event()
    world.removal.removed = True
    world.installer.uninstall(_uninstall(token="9" * 32, clean="1"))  # a forger's CLEAN=1, queued first
    forged = world.journal.jobs.pop()
    # When the forged notice is the one whose check runs (Bitrix24 confirms the app is gone)
    assert world.installer.confirm_uninstall(notice_of(forged)) is Outcome.UNINSTALLED
    # Then the portal is uninstalled but its data is kept: CLEAN=1 needs the stored token
    stored = world.store.portals[MEMBER]
    assert (stored.health, stored.domain) == ("uninstalled", PORTAL)


def test_clean_from_the_real_token_or_on_a_portal_without_one_forgets() -> None:
    for page_token in (APP_TOKEN, None):
        world = World()
        query, form = world.page(APPLICATION_TOKEN=page_token)
        world.installer.install_page(parse_install_page(query, form, POLICY, now=world.clock()))
        world.removal.removed = True
        world.installer.uninstall(_uninstall(clean="1"))
        world.installer.confirm_uninstall(notice_of(world.journal.jobs.pop()))
        assert world.store.portals[MEMBER].domain == ""
