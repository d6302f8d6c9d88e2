"""AuthorizationFlow with in-memory fakes: every callback check refuses with its reason and stores nothing."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from b24connector import pkce
from b24connector.authorization import AuthorizationFlow, CallbackParams
from b24connector.bitrix24.errors import InvalidClient, MalformedTokenPayload, OAuthTransientError
from b24connector.install import Installer
from b24connector.portals import PortalPolicy
from b24connector.problems import Problem, ProblemKind
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from b24connector.vault.errors import VaultUnavailable
from tests.support.use_case_fakes import (
    CLIENT_ID,
    Clock,
    FakeJournal,
    FakeOAuth,
    FakeRoles,
    FakeStates,
    FakeStore,
)

PORTAL = "acme.bitrix24.com"
MEMBER = "a223c6b3710f85df22e9377d6c4f7553"


class World:
    def __init__(self, *, pkce: bool = False) -> None:
        self.clock = Clock()
        self.states = FakeStates(self.clock)
        self.oauth = FakeOAuth(self.clock)
        self.store = FakeStore()
        self.journal = FakeJournal()
        self.roles = FakeRoles(self.oauth)
        policy = PortalPolicy(DEFAULT_PORTAL_SUFFIXES)
        self.installer = Installer(
            policy, self.oauth, self.store, client_id=CLIENT_ID, journal=self.journal, roles=self.roles
        )
        self.flow = AuthorizationFlow(
            policy,
            self.states,
            self.oauth,
            self.installer,
            ttl_seconds=600,
            pkce_verifier=(lambda state, nonce: f"verifier-{state[:8]}-{nonce[:8]}-" + "x" * 30)
            if pkce
            else None,
        )

    def begin(self, domain: str = PORTAL) -> tuple[str, str]:
        start = self.flow.start(domain)
        state = parse_qs(urlparse(start.redirect_url).query)["state"][0]
        return state, start.browser_nonce

    def callback(self, raw_state: str, **overrides: str | None) -> CallbackParams:
        values: dict[str, str | None] = {
            "code": self.oauth.issue_code(MEMBER, PORTAL),
            "state": raw_state,
            "domain": PORTAL,
            "member_id": MEMBER,
            "server_domain": "oauth.bitrix.info",
            "scope": "crm,user",
        }
        values.update(overrides)
        return CallbackParams(**values)  # type: ignore[arg-type]


def refused(world: World, params: CallbackParams, nonce: str | None) -> Problem:
    with pytest.raises(Problem) as caught:
        world.flow.complete(params, nonce)
    return caught.value


def test_start_stores_a_hashed_state_and_redirects_to_the_portal() -> None:
    world = World()
    start = world.flow.start("https://ACME.bitrix24.com/")
    url = urlparse(start.redirect_url)
    assert (url.scheme, url.netloc, url.path) == ("https", PORTAL, "/oauth/authorize/")
    state = parse_qs(url.query)["state"][0]
    assert len(state) >= 43
    assert start.max_age == 600
    assert len(start.browser_nonce) >= 43
    # Only hashes are kept
    assert state not in repr(world.states.items)
    assert start.browser_nonce not in repr(world.states.items)
    assert [item.portal_domain for item in world.states.items.values()] == [PORTAL]
    assert "nonce" not in repr(start)


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        (None, "domain_missing"),
        ("", "domain_missing"),
        ("evil.example.com", "domain_invalid"),
        ("acme.bitrix24.com/../x", "domain_invalid"),
        ("user@acme.bitrix24.com", "domain_invalid"),
    ],
)
def test_bad_domains_are_refused_and_nothing_is_stored(domain: str | None, reason: str) -> None:
    world = World()
    with pytest.raises(Problem) as caught:
        world.flow.start(domain)
    assert (caught.value.kind, caught.value.reason) == (ProblemKind.INVALID, reason)
    assert world.states.items == {}


def test_the_happy_callback_stores_the_grant_once() -> None:
    world = World()
    state, nonce = world.begin()
    connected = world.flow.complete(world.callback(state), nonce)
    assert (connected.domain, connected.member_id) == (PORTAL, MEMBER)
    stored = world.store.portals[MEMBER]
    assert stored.domain == PORTAL
    assert stored.tokens is not None
    assert stored.tokens.client_endpoint == f"https://{PORTAL}/rest/"
    assert stored.tokens.server_endpoint == "https://oauth.bitrix.info/rest/"
    assert world.oauth.exchanges[0]["server"] == "https://oauth.bitrix.info"
    # consumed: marked used and kept until its TTL, so a replay is told apart from an unknown state
    assert (len(world.states.items), world.states.unused()) == (1, 0)


def test_the_grant_is_ranked_by_user_admin_and_its_bindings_are_queued() -> None:
    # Given an administrator completing the flow
    world = World()
    state, nonce = world.begin()
    # When the callback lands
    world.flow.complete(world.callback(state), nonce)
    # Then the grant is stored as the administrator's and the event.bind check is queued
    assert world.store.portals[MEMBER].grant_role == "admin"
    assert world.roles.calls == 1
    assert world.journal.kinds() == ["subscribe"]


def test_an_employee_cannot_replace_the_administrators_grant() -> None:
    # Given a portal connected by its administrator
    world = World()
    state, nonce = world.begin()
    world.flow.complete(world.callback(state), nonce)
    admin_grant = world.store.portals[MEMBER]
    # When an employee who is not an administrator completes /authorize
    state, nonce = world.begin()
    employee_code = world.oauth.issue_code(MEMBER, PORTAL, admin=False)
    problem = refused(world, world.callback(state, code=employee_code), nonce)
    # Then a clear refusal, and the administrator's grant is untouched
    assert (problem.kind, problem.reason) == (ProblemKind.FORBIDDEN, "administrator_required")
    assert world.store.portals[MEMBER] is admin_grant
    assert world.store.portals[MEMBER].version == 1
    assert world.journal.kinds() == ["subscribe"]


def test_an_employee_may_connect_a_portal_nobody_holds_and_an_administrator_replaces_it() -> None:
    world = World()
    state, nonce = world.begin()
    world.flow.complete(
        world.callback(state, code=world.oauth.issue_code(MEMBER, PORTAL, admin=False)), nonce
    )
    assert world.store.portals[MEMBER].grant_role == "user"
    state, nonce = world.begin()
    world.flow.complete(world.callback(state), nonce)
    assert (world.store.portals[MEMBER].grant_role, world.store.portals[MEMBER].version) == ("admin", 2)


def test_an_unanswered_user_admin_counts_as_an_employee() -> None:
    # Given an administrator's grant, and a portal that cannot answer user.admin right now
    world = World()
    state, nonce = world.begin()
    world.flow.complete(world.callback(state), nonce)
    world.roles.fail = OAuthTransientError("TIMEOUT", "slow")
    # When another administrator authorizes, the rank cannot be proven: the stored grant stays
    state, nonce = world.begin()
    assert refused(world, world.callback(state), nonce).reason == "administrator_required"
    assert world.store.portals[MEMBER].version == 1


def test_the_state_is_single_use() -> None:
    world = World()
    state, nonce = world.begin()
    world.flow.complete(world.callback(state), nonce)
    problem = refused(world, world.callback(state), nonce)
    assert problem.reason == "state_used"
    assert len(world.oauth.exchanges) == 1
    assert world.store.writes == 1
    # and a state never issued is unknown, not used
    assert refused(world, world.callback("z" * 43), nonce).reason == "state_missing"


def test_an_expired_state_is_refused_even_if_the_table_still_holds_it() -> None:
    world = World()
    state, nonce = world.begin()
    world.clock.now += 601
    problem = refused(world, world.callback(state), nonce)
    assert problem.reason == "state_expired"
    assert world.oauth.exchanges == []
    assert world.store.writes == 0


def test_another_browsers_nonce_is_refused() -> None:
    world = World()
    state, _ = world.begin()
    _, other_nonce = world.begin()
    problem = refused(world, world.callback(state), other_nonce)
    assert problem.reason == "cookie_mismatch"
    assert world.oauth.exchanges == []


def test_no_cookie_is_refused_before_the_state_is_spent() -> None:
    world = World()
    state, nonce = world.begin()
    assert refused(world, world.callback(state), None).reason == "cookie_missing"
    # The state is still usable from the right browser
    world.flow.complete(world.callback(state), nonce)


def test_a_callback_for_another_portal_is_refused() -> None:
    world = World()
    state, nonce = world.begin()
    params = world.callback(state, domain="other.bitrix24.com")
    assert refused(world, params, nonce).reason == "domain_mismatch"
    assert world.oauth.exchanges == []
    assert world.store.writes == 0


@pytest.mark.parametrize(
    "server", ["evil.example.com", "https://oauth.bitrix.info.evil.com", "oauth.bitrix.info:444"]
)
def test_unlisted_oauth_servers_are_refused(server: str) -> None:
    world = World()
    state, nonce = world.begin()
    problem = refused(world, world.callback(state, server_domain=server), nonce)
    assert problem.reason == "server_not_allowed"
    assert world.oauth.exchanges == []


def test_the_other_regional_server_is_used_when_named() -> None:
    world = World()
    state, nonce = world.begin()
    world.flow.complete(world.callback(state, server_domain="oauth.bitrix24.tech"), nonce)
    assert world.oauth.exchanges[0]["server"] == "https://oauth.bitrix24.tech"
    stored = world.store.portals[MEMBER].tokens
    assert stored is not None
    assert stored.server_endpoint == "https://oauth.bitrix24.tech/rest/"


def test_a_token_answer_for_another_member_is_refused() -> None:
    world = World()
    state, nonce = world.begin()
    params = world.callback(state, member_id="ffffffffffffffffffffffffffffffff")
    assert refused(world, params, nonce).reason == "member_mismatch"
    assert world.store.writes == 0


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://other.bitrix24.com/rest/",
        "http://acme.bitrix24.com/rest/",
        "https://acme.bitrix24.com/evil/",
        "https://acme.bitrix24.com.evil.com/rest/",
    ],
)
def test_a_token_answer_pointing_elsewhere_is_refused(endpoint: str) -> None:
    world = World()
    state, nonce = world.begin()
    params = world.callback(state, code=world.oauth.issue_code(MEMBER, PORTAL, client_endpoint=endpoint))
    assert refused(world, params, nonce).reason == "endpoint_mismatch"
    assert world.store.writes == 0


def test_a_rejected_code_is_a_400_and_is_not_retried() -> None:
    world = World()
    state, nonce = world.begin()
    problem = refused(world, world.callback(state, code="not-issued"), nonce)
    assert (problem.kind, problem.reason) == (ProblemKind.INVALID, "code_rejected")
    assert len(world.oauth.exchanges) == 1


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (OAuthTransientError("TIMEOUT", "slow"), ProblemKind.UNAVAILABLE, "oauth_unavailable"),
        (InvalidClient("invalid_client"), ProblemKind.UPSTREAM_REJECTED, "client_rejected"),
        (MalformedTokenPayload("MISSING_FIELD"), ProblemKind.UPSTREAM_REJECTED, "token_answer_malformed"),
    ],
)
def test_oauth_server_failures(error: Exception, kind: ProblemKind, reason: str) -> None:
    world = World()
    state, nonce = world.begin()
    world.oauth.fail_exchange = error
    problem = refused(world, world.callback(state), nonce)
    assert (problem.kind, problem.reason) == (kind, reason)
    assert len(world.oauth.exchanges) == 1  # never retried
    assert world.store.writes == 0


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("code", "", "code_missing"),
        ("state", "", "state_missing"),
        ("domain", "", "domain_missing"),
        ("member_id", "", "member_id_missing"),
        ("member_id", "m/../x", "member_id_invalid"),
        ("code", "x" * 600, "code_invalid"),
        ("code", "c\u00e9", "code_invalid"),
        ("domain", "evil.example.com", "domain_invalid"),
    ],
)
def test_malformed_callbacks_are_refused_before_anything_happens(field: str, value: str, reason: str) -> None:
    world = World()
    state, nonce = world.begin()
    assert refused(world, world.callback(state, **{field: value}), nonce).reason == reason
    assert len(world.states.items) == 1  # not consumed
    assert world.states.unused() == 1
    assert world.oauth.exchanges == []


def test_storage_failure_is_unavailable() -> None:
    world = World()
    state, nonce = world.begin()
    world.store.fail = VaultUnavailable("PutItem")
    problem = refused(world, world.callback(state), nonce)
    assert (problem.kind, problem.reason) == (ProblemKind.UNAVAILABLE, "storage_unavailable")


def test_state_storage_failure_on_start_is_unavailable() -> None:
    world = World()
    world.states.fail = True
    with pytest.raises(Problem) as caught:
        world.flow.start(PORTAL)
    assert caught.value.kind is ProblemKind.UNAVAILABLE


def test_pkce_sends_the_challenge_and_the_derived_verifier() -> None:
    world = World(pkce=True)
    start = world.flow.start(PORTAL)
    query = parse_qs(urlparse(start.redirect_url).query)
    state = query["state"][0]
    verifier = f"verifier-{state[:8]}-{start.browser_nonce[:8]}-" + "x" * 30
    assert query["code_challenge"] == [pkce.challenge(verifier)]
    world.flow.complete(world.callback(state), start.browser_nonce)
    assert world.oauth.exchanges[0]["verifier"] == verifier


def test_pkce_challenge_matches_rfc7636_example() -> None:
    assert (
        pkce.challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
