"""Portal rename (fact sheet 4.1): the old address answers 302; LeadsFunction follows it and stores the new one.

The emulator's `rename_portal()` moves the portal to a new loopback port. The connector's allow-list pins
exact host:port entries in local mode, so each test decides whether the new address is allowed.
"""

from __future__ import annotations

from typing import Any

import pytest

from b24connector.settings import get_settings
from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.store import PortalStore
from bitrix24_emulator import Emulator
from tests.integration.handlers.conftest import AwsCalls, Connector

CHAIN_ATTRIBUTES = (
    "version",
    "token_ciphertext",
    "access_expires_at",
    "refresh_obtained_at",
    "refresh_due_at",
)


def _install(connector: Connector, emulator: Emulator) -> dict[str, Any]:
    connector.install_event()
    item = connector.portal_item()
    assert item is not None
    return item


def _allow(monkeypatch: pytest.MonkeyPatch, *hosts: str) -> None:
    """Allow-list these portal hosts from the next invocation on (fresh settings, fresh wiring)."""
    monkeypatch.setenv("ALLOWED_PORTAL_HOSTS", ",".join(hosts))
    get_settings.cache_clear()


def _lead_ids(page: dict[str, Any]) -> list[int]:
    assert "leads" in page, page
    return [int(lead["ID"]) for lead in page["leads"]]


def test_a_followed_rename_is_stored_once_and_the_new_domain_finds_the_portal(
    connector: Connector, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, aws_calls: AwsCalls
) -> None:
    # Given an installed portal that then moves to a new address the policy allows
    before = _install(connector, emulator)
    old_domain = emulator.portal_domain
    new_domain = emulator.rename_portal()["portal_domain"]
    assert new_domain != old_domain
    _allow(monkeypatch, old_domain, new_domain)
    emulator.reset()
    aws_calls.clear()
    # When LeadsFunction reads by member_id
    page = connector.leads(member_id=emulator.member_id, select=["ID"], limit=120)
    # Then the read succeeds through the 302, and the record names the new address
    assert _lead_ids(page) == sorted(emulator.state.leads.ids())[:120]
    assert emulator.stats()["http_302"] == 1
    item = connector.portal_item()
    assert item is not None
    assert item["domain"]["S"] == new_domain
    assert item["client_endpoint"]["S"] == f"http://{new_domain}/rest/"
    # stored once, without touching the token chain
    assert aws_calls.dynamodb_on(connector.stack.portals_table).count("UpdateItem") == 1
    for name in CHAIN_ATTRIBUTES:
        assert item[name] == before[name], name
    # And the next read goes straight to the new address
    emulator.reset()
    again = connector.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    assert len(_lead_ids(again)) == 5
    assert emulator.stats()["http_302"] == 0
    # And the new domain finds the portal; the old one no longer does
    by_domain = connector.leads(domain=new_domain, select=["ID"], limit=5)
    assert _lead_ids(by_domain) == _lead_ids(again)
    assert connector.leads(domain=old_domain, limit=5)["error"]["code"] == "PORTAL_NOT_FOUND"
    assert emulator.stats()["http_302"] == 0


def test_a_rename_to_an_address_the_policy_refuses_fails_and_stores_nothing(
    connector: Connector, emulator: Emulator
) -> None:
    # Given a portal that moves to an address the allow-list does not name
    before = _install(connector, emulator)
    emulator.rename_portal()
    emulator.reset()
    # When LeadsFunction reads
    answer = connector.leads(member_id=emulator.member_id, limit=5)
    # Then the 302 is not followed: an upstream error, one portal request, the record as it was
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert "PORTAL_MOVED" in answer["error"]["message"]
    assert emulator.stats()["requests"] == 1
    assert connector.portal_item() == before


def test_a_rename_onto_another_active_portals_domain_is_refused(
    connector: Connector, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another connected portal that already holds the address this portal moves to
    before = _install(connector, emulator)
    new_domain = emulator.rename_portal()["portal_domain"]
    _allow(monkeypatch, before["domain"]["S"], new_domain)
    other = {
        "member_id": {"S": "f" * 32},
        "version": {"N": "1"},
        "health": {"S": "active"},
        "domain": {"S": new_domain},
        "client_endpoint": {"S": f"http://{new_domain}/rest/"},
        "updated_at": {"N": "1"},
    }
    dynamodb = connector.stack.client("dynamodb")
    dynamodb.put_item(TableName=connector.stack.portals_table, Item=other)
    # When this portal's read meets the 302
    answer = connector.leads(member_id=emulator.member_id, limit=5)
    # Then the read fails and neither record changes: a portal cannot take over another's domain
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert connector.portal_item() == before
    held = dynamodb.get_item(
        TableName=connector.stack.portals_table, Key={"member_id": other["member_id"]}, ConsistentRead=True
    )["Item"]
    assert held == other


def test_a_rename_that_cannot_be_stored_still_serves_the_read(
    connector: Connector, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given DynamoDB refuses the rename's write
    before = _install(connector, emulator)
    new_domain = emulator.rename_portal()["portal_domain"]
    _allow(monkeypatch, before["domain"]["S"], new_domain)

    def unavailable(*_: Any, **__: Any) -> Any:
        raise VaultUnavailable("DynamoDB UpdateItem failed (InternalServerError)")

    with monkeypatch.context() as patch:
        patch.setattr(PortalStore, "record_move", unavailable)
        # When a read meets the 302
        page = connector.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    # Then the read is answered from the new address, and the record is unchanged
    assert len(_lead_ids(page)) == 5
    assert connector.portal_item() == before
    # And the next read stores the rename
    connector.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    item = connector.portal_item()
    assert item is not None
    assert item["domain"]["S"] == new_domain
