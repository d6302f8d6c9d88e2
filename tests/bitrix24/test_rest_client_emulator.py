"""RestClient against the emulated portal: call, batch, renewal, rename, limits and faults."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from b24connector.bitrix24.errors import (
    AccessDenied,
    ExpiredToken,
    InvalidToken,
    MethodNotFound,
    OperationTimeLimit,
    QueryLimitExceeded,
    ServerError,
)
from b24connector.bitrix24.oauth import OAuthClient
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.rest import RestClient
from b24connector.bitrix24.transport import new_session
from bitrix24_emulator import Emulator
from tests.bitrix24.emulator_fixtures import make_policy
from tests.support.pacing import NoPacing

pytestmark = pytest.mark.integration

PortalFactory = Callable[..., PortalContext]


def test_call_returns_a_page_without_counting(
    fresh: Emulator, rest: RestClient, portal_for: PortalFactory
) -> None:
    response = rest.call(
        portal_for(),
        "crm.lead.list",
        {"order": {"ID": "ASC"}, "filter": {">ID": 0}, "select": ["ID", "TITLE"], "start": -1},
    )
    assert len(response.result) == 50
    assert response.total == 0
    assert response.next is None
    assert response.time["operating_reset_at"] > 0
    stats = fresh.stats()
    assert (stats["requests"], stats["count_queries"]) == (1, 0)


def test_counting_pages_are_visible_in_the_stats(
    fresh: Emulator, rest: RestClient, portal_for: PortalFactory
) -> None:
    response = rest.call(portal_for(), "crm.lead.list", {"select": ["ID"], "start": 0})
    assert response.total == 10_000
    assert response.next == 50
    assert fresh.stats()["count_queries"] == 1


def test_batch_with_a_sub_error(fresh: Emulator, rest: RestClient, portal_for: PortalFactory) -> None:
    result = rest.batch(
        portal_for(),
        {
            "first": ("crm.lead.list", {"order": {"ID": "ASC"}, "select": ["ID"], "start": -1}),
            "next": (
                "crm.lead.list",
                {"order": {"ID": "ASC"}, "filter": {">ID": "$result[first][49][ID]"}, "start": -1},
            ),
            "missing": ("crm.lead.get", {"id": 10**9}),
            "item": ("crm.item.list", {"entityTypeId": 1, "select": ["id"], "start": -1}),
        },
    )
    assert len(result.results["first"]) == 50
    assert int(result.results["next"][0]["ID"]) > int(result.results["first"][49]["ID"])
    assert "missing" in result.errors
    assert len(result.results["item"]["items"]) == 50
    assert fresh.stats()["requests"] == 1


def test_unknown_method(rest: RestClient, portal_for: PortalFactory) -> None:
    with pytest.raises(MethodNotFound):
        rest.call(portal_for(), "crm.nothing.here")


def test_expired_token_renews_through_the_oauth_server(
    fresh: Emulator, rest: RestClient, oauth: OAuthClient
) -> None:
    tokens = oauth.exchange_code(fresh.authorization_code())
    refresh = {"token": tokens.refresh_token}
    renewed: list[str] = []

    def renew(rejected: str) -> str:
        fresh_pair = oauth.refresh(refresh["token"])
        refresh["token"] = fresh_pair.refresh_token  # what the vault persists
        renewed.append(rejected)
        return fresh_pair.access_token

    portal = PortalContext(tokens.client_endpoint, tokens.access_token, renew=renew)
    fresh.expire_access_tokens()
    response = rest.call(portal, "crm.lead.list", {"select": ["ID"], "start": -1})
    assert len(response.result) == 50
    assert renewed == [tokens.access_token]
    assert portal.access_token != tokens.access_token


def test_a_rejected_token_after_renewal_is_not_retried_again(fresh: Emulator, rest: RestClient) -> None:
    chain = fresh.issue_tokens()
    other = fresh.issue_tokens()
    portal = PortalContext(
        chain["client_endpoint"], chain["access_token"], renew=lambda _t: other["access_token"]
    )
    fresh.expire_access_tokens()  # both chains
    with pytest.raises(ExpiredToken):
        rest.call(portal, "app.info")
    assert fresh.stats()["http_401"] == 2


def test_revoked_token(fresh: Emulator, rest: RestClient) -> None:
    with pytest.raises(InvalidToken):
        rest.call(PortalContext(fresh.client_endpoint, "x" * 32), "app.info")


def test_query_limit_from_the_leaky_bucket_is_backed_off(fresh: Emulator, portal_for: PortalFactory) -> None:
    # Given a tiny bucket on the portal and a client without its own pacing
    fresh.configure(rate_drain_per_second=20.0, rate_burst=2)
    try:
        client = RestClient(make_policy(fresh), session=new_session(), pacer=NoPacing(), backoff_base=0.1)
        portal = portal_for()
        for _ in range(6):
            client.call(portal, "app.info")
        stats = fresh.stats()
        assert stats["http_503"] >= 1
        assert stats["requests"] == 6 + stats["http_503"]
    finally:
        fresh.configure(rate_drain_per_second=None, rate_burst=None)


def test_query_limit_gives_up_after_bounded_retries(fresh: Emulator, portal_for: PortalFactory) -> None:
    fresh.add_faults([{"target": "rest", "kind": "query_limit", "count": 10}])
    client = RestClient(
        make_policy(fresh),
        session=new_session(),
        pacer=NoPacing(),
        backoff_base=0.01,
        max_query_limit_retries=3,
    )
    with pytest.raises(QueryLimitExceeded):
        client.call(portal_for(), "app.info")
    assert fresh.stats()["requests"] == 4


def test_operation_limit_waits_when_the_reset_is_near(
    fresh: Emulator, rest: RestClient, portal_for: PortalFactory
) -> None:
    # The real server's 429 carries no `time` block; this exercises the client's wait with the older
    # reading (a reset in the error answer), switched on for this test only.
    fresh.configure(error_time_block=True)
    try:
        fresh.add_faults(
            [{"target": "rest", "kind": "operation_time_limit", "delay": 1, "method": "crm.lead.list"}]
        )
        response = rest.call(portal_for(), "crm.lead.list", {"select": ["ID"], "start": -1})
    finally:
        fresh.configure(error_time_block=False)
    assert len(response.result) == 50
    assert fresh.stats()["http_429"] == 1


def test_operation_limit_raises_when_the_reset_is_far(
    fresh: Emulator, rest: RestClient, portal_for: PortalFactory
) -> None:
    # A real 429 has no `time` block: the reset comes from an earlier successful answer's time block
    portal = portal_for()
    assert rest.call(portal, "crm.lead.list", {"select": ["ID"], "start": -1}).result
    fresh.add_operating("crm.lead.list", 500)
    with pytest.raises(OperationTimeLimit) as caught:
        rest.call(portal, "crm.lead.list", {"select": ["ID"], "start": -1})
    assert caught.value.reset_at is not None
    assert caught.value.reset_at > fresh.clock.now() + 60
    # other methods keep working
    assert rest.call(portal_for(), "crm.item.list", {"entityTypeId": 1, "select": ["id"], "start": -1}).result


def test_html_error_pages(fresh: Emulator, rest: RestClient, portal_for: PortalFactory) -> None:
    fresh.add_faults([{"target": "rest", "kind": "html", "status": 502}])
    with pytest.raises(ServerError) as caught:
        rest.call(portal_for(), "app.info")
    assert caught.value.http_status == 502


def test_access_denied_without_crm_scope(
    fresh: Emulator, rest: RestClient, portal_for: PortalFactory
) -> None:
    fresh.configure(scope="user")
    try:
        portal = portal_for()
        with pytest.raises(AccessDenied):
            rest.call(portal, "crm.lead.list", {"start": -1})
    finally:
        fresh.configure(scope="crm,user")


def test_portal_rename_is_followed_and_reported() -> None:
    # A separate emulator: the rename is permanent.
    with Emulator() as emu:
        old_domain = emu.portal_domain
        tokens = emu.issue_tokens()
        moved = emu.rename_portal()
        client = RestClient(make_policy(emu, old_domain), session=new_session(), pacer=NoPacing())
        reported: list[tuple[str, str]] = []
        portal = PortalContext(
            tokens["client_endpoint"],
            tokens["access_token"],
            on_moved=lambda host, endpoint: reported.append((host, endpoint)),
            domain=old_domain,
        )
        response = client.call(portal, "crm.lead.list", {"select": ["ID"], "start": -1})
        assert len(response.result) == 50
        assert reported == [(moved["portal_domain"], f"http://{moved['portal_domain']}/rest/")]
        assert portal.domain == moved["portal_domain"]
        stats = emu.stats()
        assert stats["http_302"] == 1
        assert stats["requests"] == 2
        # the next call goes straight to the new address
        client.call(portal, "app.info")
        assert emu.stats()["http_302"] == 1
