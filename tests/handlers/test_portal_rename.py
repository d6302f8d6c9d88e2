"""Portal rename (fact sheet 4.1): the old address answers 302; LeadsFunction follows it and stores the new one.

The emulator's `rename_portal()` moves the portal to a new loopback port. The rig's allow-list pins
exact host:port entries in local mode, so each test decides whether the new address is allowed.
"""

from __future__ import annotations

from typing import Any

import pytest

from b24connector.settings import get_settings
from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.store import PortalStore
from bitrix24_emulator import Emulator
from tests.support.emf import emf_counts
from tests.support.rig import AwsCalls, Rig

pytestmark = pytest.mark.integration

CHAIN_ATTRIBUTES = (
    "version",
    "token_ciphertext",
    "access_expires_at",
    "refresh_obtained_at",
    "refresh_due_at",
)


def _install(rig: Rig, emulator: Emulator) -> dict[str, Any]:
    rig.http.install_event()
    item = rig.portal()
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
    rig: Rig, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, aws_calls: AwsCalls
) -> None:
    # Given an installed portal that then moves to a new address the policy allows
    before = _install(rig, emulator)
    old_domain = emulator.portal_domain
    new_domain = emulator.rename_portal()["portal_domain"]
    assert new_domain != old_domain
    _allow(monkeypatch, old_domain, new_domain)
    emulator.reset()
    aws_calls.clear()
    # When LeadsFunction reads by member_id
    page = rig.leads(member_id=emulator.member_id, select=["ID"], limit=120)
    # Then the read succeeds through the 302, and the record names the new address
    assert _lead_ids(page) == sorted(emulator.state.leads.ids())[:120]
    assert emulator.stats()["http_302"] == 1
    item = rig.portal()
    assert item is not None
    assert item["domain"]["S"] == new_domain
    assert item["client_endpoint"]["S"] == f"http://{new_domain}/rest/"
    # stored once, without touching the token chain
    assert aws_calls.dynamodb_on(rig.stack.portals_table).count("UpdateItem") == 1
    for name in CHAIN_ATTRIBUTES:
        assert item[name] == before[name], name
    # And the next read goes straight to the new address
    emulator.reset()
    again = rig.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    assert len(_lead_ids(again)) == 5
    assert emulator.stats()["http_302"] == 0
    # And the new domain finds the portal; the old one no longer does
    by_domain = rig.leads(domain=new_domain, select=["ID"], limit=5)
    assert _lead_ids(by_domain) == _lead_ids(again)
    assert rig.leads(domain=old_domain, limit=5)["error"]["code"] == "PORTAL_NOT_FOUND"
    assert emulator.stats()["http_302"] == 0


def test_a_rename_to_an_address_the_policy_refuses_fails_and_stores_nothing(
    rig: Rig, emulator: Emulator
) -> None:
    # Given a portal that moves to an address the allow-list does not name
    before = _install(rig, emulator)
    emulator.rename_portal()
    emulator.reset()
    # When LeadsFunction reads
    answer = rig.leads(member_id=emulator.member_id, limit=5)
    # Then the 302 is not followed: an upstream error, one portal request, the record as it was
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert "PORTAL_MOVED" in answer["error"]["message"]
    assert emulator.stats()["requests"] == 1
    assert rig.portal() == before


def test_a_rename_onto_another_active_portals_domain_is_refused(
    rig: Rig, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another connected portal that already holds the address this portal moves to
    before = _install(rig, emulator)
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
    dynamodb = rig.stack.client("dynamodb")
    dynamodb.put_item(TableName=rig.stack.portals_table, Item=other)
    # When this portal's read meets the 302
    answer = rig.leads(member_id=emulator.member_id, limit=5)
    # Then the read fails and neither record changes: a portal cannot take over another's domain
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert rig.portal() == before
    held = dynamodb.get_item(
        TableName=rig.stack.portals_table, Key={"member_id": other["member_id"]}, ConsistentRead=True
    )["Item"]
    assert held == other


def test_a_rename_that_cannot_be_stored_still_serves_the_read(
    rig: Rig, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given DynamoDB refuses the rename's write
    before = _install(rig, emulator)
    new_domain = emulator.rename_portal()["portal_domain"]
    _allow(monkeypatch, before["domain"]["S"], new_domain)

    def unavailable(*_: Any, **__: Any) -> Any:
        raise VaultUnavailable("DynamoDB UpdateItem failed (InternalServerError)")

    with monkeypatch.context() as patch:
        patch.setattr(PortalStore, "record_move", unavailable)
        # When a read meets the 302
        page = rig.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    # Then the read is answered from the new address, and the record is unchanged
    assert len(_lead_ids(page)) == 5
    assert rig.portal() == before
    # And the next read stores the rename
    rig.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    item = rig.portal()
    assert item is not None
    assert item["domain"]["S"] == new_domain


# --- the scheduled refresh sees the rename first (issue 10, point 6) ----------------------------------


def _age_portal(rig: Rig, *, days: int) -> None:
    """Move the portal's refresh clock back so the next sweep finds it due."""
    item = rig.portal()
    assert item is not None
    past = int(float(item["refresh_obtained_at"]["N"])) - days * 86_400
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": item["member_id"]},
        UpdateExpression="SET #o = :o, #d = :d REMOVE #a",
        ExpressionAttributeNames={
            "#o": "refresh_obtained_at",
            "#d": "refresh_due_at",
            "#a": "last_refresh_attempt_at",
        },
        ExpressionAttributeValues={":o": {"N": str(past)}, ":d": {"N": str(past + 21 * 86_400)}},
    )


def _scheduled_refresh(rig: Rig, capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    """Sweep, then run every queued message through the worker; the metrics they emitted."""
    capsys.readouterr()
    report = rig.sweep()
    assert (report["due"], report["queued"]) == (1, 1), report
    sqs = rig.stack.client("sqs")
    messages = sqs.receive_message(QueueUrl=rig.stack.refresh_queue_url, MaxNumberOfMessages=10)["Messages"]
    event = {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-central-1:123456789012:refresh",
                "awsRegion": "eu-central-1",
            }
            for m in messages
        ]
    }
    assert rig.invoke("RefreshWorkerFunction", event) == {"batchItemFailures": []}
    return emf_counts(capsys.readouterr().out)


def test_a_rename_seen_first_by_the_scheduled_refresh_moves_the_portal_and_reads_reach_the_new_host(
    rig: Rig,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an installed portal renamed while idle, both addresses allowed
    before = _install(rig, emulator)
    old_domain = emulator.portal_domain
    new_domain = emulator.rename_portal()["portal_domain"]
    _allow(monkeypatch, old_domain, new_domain)
    _age_portal(rig, days=22)
    emulator.reset()
    # When the scheduled refresh runs (sweep + worker) before any read met the 302
    metrics = _scheduled_refresh(rig, capsys)
    # Then the new pair is stored and domain and endpoint moved together, counted once
    assert emulator.stats()["token_requests"] == 1
    item = rig.portal()
    assert item is not None
    assert int(item["version"]["N"]) == int(before["version"]["N"]) + 1
    assert item["domain"]["S"] == new_domain
    assert item["client_endpoint"]["S"] == f"http://{new_domain}/rest/"
    assert metrics.get("PortalMoved") == 1
    assert "PortalMoveRefused" not in metrics
    # the OAuth server's own server_endpoint is on the allow-list and stays stored
    assert "ServerEndpointRefused" not in metrics
    assert item["server_endpoint"] == before["server_endpoint"]
    # And LeadsFunction reads work and go straight to the new host (the old one would answer 302)
    emulator.reset()
    page = rig.leads(member_id=emulator.member_id, select=["ID"], limit=120)
    assert _lead_ids(page) == sorted(emulator.state.leads.ids())[:120]
    assert emulator.stats()["http_302"] == 0
    assert emulator.stats()["requests"] >= 1
    # And the new domain finds the portal; the old one no longer does
    assert len(_lead_ids(rig.leads(domain=new_domain, select=["ID"], limit=5))) == 5
    assert rig.leads(domain=old_domain, limit=5)["error"]["code"] == "PORTAL_NOT_FOUND"


def test_a_refresh_naming_a_host_the_policy_refuses_keeps_the_old_address_and_the_302_still_decides(
    rig: Rig,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a portal renamed to an address the allow-list does not name (yet)
    before = _install(rig, emulator)
    old_domain = emulator.portal_domain
    new_domain = emulator.rename_portal()["portal_domain"]
    _age_portal(rig, days=22)
    # When the scheduled refresh's answer names the new host
    metrics = _scheduled_refresh(rig, capsys)
    # Then the pair is stored, but the address is not: the refused host never reaches the record
    item = rig.portal()
    assert item is not None
    assert int(item["version"]["N"]) == int(before["version"]["N"]) + 1
    assert item["domain"]["S"] == old_domain
    assert item["client_endpoint"] == before["client_endpoint"]
    assert metrics.get("PortalMoveRefused") == 1
    assert "PortalMoved" not in metrics
    # And once the operator allows the new host, the next read follows the 302 and moves the portal
    _allow(monkeypatch, old_domain, new_domain)
    emulator.reset()
    page = rig.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    assert len(_lead_ids(page)) == 5
    assert emulator.stats()["http_302"] == 1
    moved = rig.portal()
    assert moved is not None
    assert moved["domain"]["S"] == new_domain
    assert moved["client_endpoint"]["S"] == f"http://{new_domain}/rest/"


def test_a_302_followed_before_the_refresh_keeps_working_after_it(
    rig: Rig,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a rename a read already followed (302 first)
    _install(rig, emulator)
    old_domain = emulator.portal_domain
    new_domain = emulator.rename_portal()["portal_domain"]
    _allow(monkeypatch, old_domain, new_domain)
    assert len(_lead_ids(rig.leads(member_id=emulator.member_id, select=["ID"], limit=5))) == 5
    # When the scheduled refresh runs afterwards
    _age_portal(rig, days=22)
    metrics = _scheduled_refresh(rig, capsys)
    # Then nothing moves again and reads still go straight to the new host
    item = rig.portal()
    assert item is not None
    assert item["domain"]["S"] == new_domain
    assert item["client_endpoint"]["S"] == f"http://{new_domain}/rest/"
    assert "PortalMoved" not in metrics
    emulator.reset()
    assert len(_lead_ids(rig.leads(member_id=emulator.member_id, select=["ID"], limit=5))) == 5
    assert emulator.stats()["http_302"] == 0
