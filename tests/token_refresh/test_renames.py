"""A refresh answer naming another portal host is a move; disallowed hosts and OAuth servers are never stored."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_OAUTH_SERVERS, DEFAULT_PORTAL_SUFFIXES
from b24connector.token_refresh.coordinator import RefreshCoordinator
from b24connector.token_refresh.outcomes import RefreshOutcome, RescueOutcome
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.token_refresh.rescue import new_rescue_message
from b24connector.tokens import TokenSet
from b24connector.vault.endpoints import EndpointGuard
from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.portal import Portal
from tests.support.fake_oauth import FactSheetOAuthServer
from tests.support.vault_unit import UnitVault

DAY = 86_400
OLD = "a.bitrix24.com"
NEW = "renamed.bitrix24.com"
GUARD = EndpointGuard(PortalPolicy(DEFAULT_PORTAL_SUFFIXES), DEFAULT_OAUTH_SERVERS)


class AnswerRewriter:
    """The fake OAuth server, with the refresh answer's endpoints replaced (a portal renamed meanwhile)."""

    def __init__(self, inner: FactSheetOAuthServer, **endpoints: str) -> None:
        self.inner = inner
        self.endpoints = endpoints
        self.hints: list[str | None] = []

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        self.hints.append(server_hint)
        return replace(self.inner.refresh(refresh_token, server_hint=server_hint), **self.endpoints)


def _coordinator(vault: UnitVault, **endpoints: str) -> tuple[RefreshCoordinator, AnswerRewriter]:
    refresher = AnswerRewriter(vault.oauth, **endpoints)
    coordinator = RefreshCoordinator(
        vault.portals,
        refresher,
        vault.rescue,
        endpoints=vault.endpoints,
        policy=RefreshPolicy(),
        clock=vault.clock,
        sleep=vault.clock.sleep,
        jitter=lambda: 1.0,
    )
    return coordinator, refresher


def _metric(metrics: dict[str, Any], name: str) -> int:
    return len(metrics.get(name, {}).get("Value", []))


def _stored(vault: UnitVault, member_id: str = "member-a") -> Portal:
    portal = vault.portals.get(member_id, consistent=True)
    assert portal is not None
    return portal


def _scheduled(vault: UnitVault, coordinator: RefreshCoordinator, portal: Portal) -> RefreshOutcome:
    vault.clock.advance(22 * DAY)
    return coordinator.refresh_if_due(portal.member_id, portal.version)


# --- the guard ------------------------------------------------------------------------------------


def test_the_guard_moves_only_to_allowed_hosts_and_keeps_what_the_answer_left_out() -> None:
    same = GUARD.judge(OLD, f"https://{OLD}/rest/", "https://oauth.bitrix.info/rest/")
    assert (same.client_endpoint, same.domain, same.moved) == (f"https://{OLD}/rest/", OLD, False)
    assert same.server_endpoint == "https://oauth.bitrix.info/rest/"
    moved = GUARD.judge(OLD, f"https://{NEW.upper()}/rest/", "")
    assert (moved.domain, moved.moved_from, moved.moved) == (NEW, OLD, True)
    assert moved.client_endpoint == f"https://{NEW}/rest/"
    assert moved.server_endpoint is None
    assert GUARD.judge(OLD, "", "") == type(same)()
    for endpoint, reason in (
        ("https://portal.evil.example/rest/", "not_allowed"),
        (f"http://{NEW}/rest/", "scheme"),
        (f"https://{NEW}/other/", "path"),
        ("https://a.b.bitrix24.com/rest/", "not_allowed"),
    ):
        refused = GUARD.judge(OLD, endpoint, "")
        assert (refused.client_endpoint, refused.domain, refused.refused) == (None, None, reason), endpoint
    assert GUARD.judge(OLD, "https://portal.evil.example/rest/", "").refused_host == "portal.evil.example"


@pytest.mark.parametrize(
    ("server", "allowed"),
    [
        ("https://oauth.bitrix.info/rest/", True),
        ("https://oauth.bitrix24.tech", True),
        ("https://OAUTH.bitrix.info/", True),
        ("https://oauth.bitrix24.info/rest/", False),
        ("http://oauth.bitrix.info/rest/", False),
        ("https://oauth.bitrix.info.evil.example/rest/", False),
        ("https://oauth.bitrix.info/rest/app.info", False),
    ],
)
def test_the_guard_stores_only_oauth_servers_on_the_allow_list(server: str, allowed: bool) -> None:
    change = GUARD.judge(OLD, "", server)
    assert change.server_refused is not allowed
    assert (change.server_endpoint is not None) is allowed


# --- scheduled and lazy refresh -----------------------------------------------------------------


def test_a_refresh_naming_an_allowed_new_host_moves_domain_and_endpoint_together(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given an installed portal renamed while idle
    portal, _ = vault.install(domain=OLD)
    coordinator, _ = _coordinator(vault, client_endpoint=f"https://{NEW}/rest/")
    # When the scheduled refresh's answer names the new host
    assert _scheduled(vault, coordinator, portal) is RefreshOutcome.REFRESHED
    # Then the pair, the domain and the endpoint moved in the one commit, and the move is counted
    stored = _stored(vault)
    assert stored.version == portal.version + 1
    assert (stored.domain, stored.client_endpoint) == (NEW, f"https://{NEW}/rest/")
    found = vault.portals.get_by_domain(NEW)
    assert found is not None
    assert found.member_id == "member-a"
    assert vault.portals.get_by_domain(OLD) is None
    assert _metric(metrics_capture, "PortalMoved") == 1
    assert _metric(metrics_capture, "PortalMoveRefused") == 0


@pytest.mark.parametrize(
    "endpoint", ["https://portal.evil.example/rest/", f"http://{NEW}/rest/", "https://a.b.bitrix24.com/rest/"]
)
def test_a_refresh_naming_a_disallowed_endpoint_stores_the_pair_but_never_the_endpoint(
    vault: UnitVault, metrics_capture: dict[str, Any], endpoint: str
) -> None:
    portal, _ = vault.install(domain=OLD)
    coordinator, _ = _coordinator(vault, client_endpoint=endpoint)
    assert _scheduled(vault, coordinator, portal) is RefreshOutcome.REFRESHED
    stored = _stored(vault)
    assert stored.version == portal.version + 1
    assert (stored.domain, stored.client_endpoint) == (OLD, f"https://{OLD}/rest/")
    assert _metric(metrics_capture, "PortalMoveRefused") == 1
    assert _metric(metrics_capture, "PortalMoved") == 0
    # and the pair handed back names what is stored, not the refused endpoint
    assert vault.portals.tokens(stored).client_endpoint == f"https://{OLD}/rest/"


def test_a_lazy_refresh_naming_a_new_host_moves_the_portal_too(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    _, grant = vault.install(domain=OLD)
    coordinator, _ = _coordinator(vault, client_endpoint=f"https://{NEW}/rest/")
    vault.clock.advance(3601)
    fresh = coordinator.fresh_access_token("member-a", grant.access_token)
    stored = _stored(vault)
    assert (stored.domain, stored.client_endpoint) == (NEW, f"https://{NEW}/rest/")
    assert fresh.client_endpoint == f"https://{NEW}/rest/"
    assert _metric(metrics_capture, "PortalMoved") == 1


def test_a_new_host_another_active_portal_holds_is_refused(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given another connected portal at the address this portal's refresh answer names
    portal, _ = vault.install(domain=OLD)
    vault.install(member_id="member-b", domain=NEW)
    coordinator, _ = _coordinator(vault, client_endpoint=f"https://{NEW}/rest/")
    # When the refresh commits
    assert _scheduled(vault, coordinator, portal) is RefreshOutcome.REFRESHED
    # Then this portal keeps its address; the other one keeps its domain lookups
    assert (_stored(vault).domain, _stored(vault).client_endpoint) == (OLD, f"https://{OLD}/rest/")
    holder = vault.portals.get_by_domain(NEW)
    assert holder is not None
    assert holder.member_id == "member-b"
    assert _metric(metrics_capture, "PortalMoveRefused") == 1


def test_a_move_whose_domain_lookup_fails_keeps_the_old_address_and_still_commits_the_pair(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    portal, _ = vault.install(domain=OLD)
    coordinator, _ = _coordinator(vault, client_endpoint=f"https://{NEW}/rest/")

    def unavailable(domain: str) -> Portal | None:
        raise VaultUnavailable("DynamoDB Query DomainIndex failed (InternalServerError)")

    monkeypatch.setattr(vault.portals, "get_by_domain", unavailable)
    assert _scheduled(vault, coordinator, portal) is RefreshOutcome.REFRESHED
    stored = _stored(vault)
    assert stored.version == portal.version + 1
    assert stored.domain == OLD
    assert _metric(metrics_capture, "PortalMoveRefused") == 1


def test_a_server_endpoint_outside_oauth_servers_is_never_stored(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given a refresh answer naming an OAuth server that is not on the allow-list
    portal, _ = vault.install(domain=OLD)
    before = _stored(vault).server_endpoint
    coordinator, refresher = _coordinator(vault, server_endpoint="https://oauth.evil.example/rest/")
    # When it commits
    assert _scheduled(vault, coordinator, portal) is RefreshOutcome.REFRESHED
    # Then the stored server endpoint is the old one, counted, and the next refresh still goes there
    stored = _stored(vault)
    assert stored.version == portal.version + 1
    assert stored.server_endpoint == before == "https://oauth.bitrix.info/rest/"
    assert _metric(metrics_capture, "ServerEndpointRefused") == 1
    assert _scheduled(vault, coordinator, stored) is RefreshOutcome.REFRESHED
    assert refresher.hints == [before, before]


# --- the rescue path ------------------------------------------------------------------------------


def test_a_rescued_pair_naming_a_new_host_moves_the_portal_when_applied(
    vault: UnitVault, monkeypatch: pytest.MonkeyPatch, metrics_capture: dict[str, Any]
) -> None:
    # Given a refresh naming the new host whose commit could not land (the pair went to the rescue queue)
    portal, grant = vault.install(domain=OLD)
    coordinator, _ = _coordinator(vault, client_endpoint=f"https://{NEW}/rest/")

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise VaultUnavailable("DynamoDB UpdateItem failed (InternalServerError)")

    monkeypatch.setattr(vault.portals, "commit_refresh", fail)
    vault.clock.advance(3601)
    coordinator.fresh_access_token("member-a", grant.access_token)
    monkeypatch.undo()
    (message,) = vault.rescue.messages
    assert _stored(vault).domain == OLD
    # When the rescue function applies it
    assert coordinator.apply_rescue(message.to_json()) is RescueOutcome.APPLIED
    # Then domain and endpoint moved with the pair
    stored = _stored(vault)
    assert stored.version == portal.version + 1
    assert (stored.domain, stored.client_endpoint) == (NEW, f"https://{NEW}/rest/")
    assert _metric(metrics_capture, "PortalMoved") == 1


def test_a_rescue_message_with_unjudged_endpoints_commits_the_pair_but_not_them(
    vault: UnitVault, metrics_capture: dict[str, Any]
) -> None:
    # Given a rescue message (e.g. queued by an older build) whose endpoints nobody judged
    portal, grant = vault.install(domain=OLD)
    rotated = vault.oauth.refresh(grant.refresh_token)
    hostile = replace(
        rotated,
        client_endpoint="https://portal.evil.example/rest/",
        server_endpoint="https://oauth.evil.example/rest/",
    )
    message = new_rescue_message(portal.version, vault.cipher.seal(hostile))
    # When it is applied
    assert vault.coordinator().apply_rescue(message.to_json()) is RescueOutcome.APPLIED
    # Then the live pair is stored, the endpoints are not
    stored = _stored(vault)
    assert stored.version == portal.version + 1
    assert vault.portals.tokens(stored).access_token == rotated.access_token
    assert (stored.domain, stored.client_endpoint) == (OLD, f"https://{OLD}/rest/")
    assert stored.server_endpoint == "https://oauth.bitrix.info/rest/"
    assert _metric(metrics_capture, "PortalMoveRefused") == 1
    assert _metric(metrics_capture, "ServerEndpointRefused") == 1


# --- the store's invariant ------------------------------------------------------------------------


def test_commit_refresh_writes_client_endpoint_only_together_with_its_domain(vault: UnitVault) -> None:
    portal, grant = vault.install(domain=OLD)
    sealed = vault.cipher.seal(replace(grant, client_endpoint=f"https://{NEW}/rest/"))
    # Without a domain the endpoint is not written (a half move would brick the portal)
    committed = vault.portals.commit_refresh("member-a", portal.version, sealed)
    assert committed is not None
    assert (committed.domain, committed.client_endpoint) == (OLD, f"https://{OLD}/rest/")
    # A domain without an endpoint is a caller's mistake
    empty = replace(sealed, metadata=replace(sealed.metadata, client_endpoint=""))
    with pytest.raises(ValueError, match="client_endpoint"):
        vault.portals.commit_refresh("member-a", committed.version, empty, domain=NEW)
    # Together they move
    moved = vault.portals.commit_refresh("member-a", committed.version, sealed, domain=NEW)
    assert moved is not None
    assert (moved.domain, moved.client_endpoint) == (NEW, f"https://{NEW}/rest/")
