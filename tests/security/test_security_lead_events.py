"""Lead events end to end in process: Bitrix24's delivery through the bound handler to a subscriber's own
EventBridge rule, forged deliveries refused with nothing recorded or published, no token on the bus."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import requests

from tests.leak_canary import canary_value
from tests.support.rig import Rig, header


def _rest(rig: Rig, method: str, access_token: str, **params: Any) -> Any:
    answer = requests.post(
        f"{rig.emulator.portal_url}/rest/{method}", json={**params, "auth": access_token}, timeout=10
    )
    return answer.json()["result"]


def _lead_form(rig: Rig, lead_id: int, *, token: str, member_id: str | None = None) -> list[tuple[str, str]]:
    """An ONCRMLEADADD as Bitrix24 posts it (docs/bitrix24-facts.md#f-events-7), with a chosen token."""
    return [
        ("event", "ONCRMLEADADD"),
        ("event_handler_id", "7"),
        ("data[FIELDS][ID]", str(lead_id)),
        ("ts", "1800000000"),
        ("auth[access_token]", canary_value("access")),
        ("auth[domain]", rig.emulator.portal_domain),
        ("auth[member_id]", member_id or rig.emulator.member_id),
        ("auth[application_token]", token),
    ]


def _events(rig: Rig, queue_url: str) -> list[dict[str, Any]]:
    return [json.loads(body) for body in rig.queue_bodies(queue_url)]


def test_a_lead_added_through_rest_reaches_the_subscribers_rule_once_without_tokens(
    rig_factory: Callable[..., Rig],
) -> None:
    # Given a portal installed by its administrator (the application token's verifier is stored), its
    # lead events bound to /events, and a subscriber's own rule -> SQS queue on the stack's bus
    rig = rig_factory()
    rig.install_event()
    assert {"ONCRMLEADADD", "ONAPPUNINSTALL"} <= {b["event"] for b in rig.emulator.events()["bindings"]}
    queue = rig.subscribe()
    rig.publish_changes()
    connected = _events(rig, queue)
    assert [e["detail-type"] for e in connected] == ["PortalConnected"]
    assert connected[0]["detail"]["grant_role"] == "admin"

    # When an employee adds a lead through REST, and the portal's delivery is sent twice (a second
    # bound row's copy carries the same ts)
    employee = rig.emulator.state.issue_tokens("test", 2)[0].access.token
    lead_id = _rest(rig, "crm.lead.add", employee, fields={"TITLE": "From REST"})
    assert rig.emulator.flush_events(10)
    (delivery,) = [d for d in rig.emulator.events()["deliveries"] if d["event"] == "ONCRMLEADADD"]
    assert delivery["status"] == 200
    rig.publish_changes()

    # Then the subscriber receives exactly one LeadCreated naming the portal and the lead
    (created,) = _events(rig, queue)
    assert created["source"] == "b24connector"
    assert created["detail-type"] == "LeadCreated"
    detail = created["detail"]
    assert (detail["member_id"], detail["domain"], detail["lead_id"]) == (
        rig.emulator.member_id, rig.emulator.portal_domain, lead_id
    )  # fmt: skip
    # and no event carries a token, code, application token or secret (every minted one is a canary)
    assert rig.emulator.application_token not in json.dumps([*connected, created])


def test_forged_and_duplicate_lead_deliveries_publish_nothing(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(portals=2)
    rig.install_event()
    rig.install_event(rig.others[0])
    queue = rig.subscribe()
    rig.publish_changes()
    rig.queue_bodies(queue)  # the two PortalConnected
    lead_events_before = rig.stack.raw_items(rig.stack.lead_events_table)
    other_token = rig.others[0].application_token
    forgeries = {
        "random token": _lead_form(rig, 5, token=canary_value("apptoken")),
        "other portal's token": _lead_form(rig, 5, token=other_token),
        "unknown portal": _lead_form(rig, 5, token=rig.emulator.application_token, member_id="unknown"),
    }
    for label, form in forgeries.items():
        answer = rig.post_form("/events", form)
        assert answer["statusCode"] == 403, label
        assert header(answer, "X-Reason-Code") == "event_unauthenticated", label
    assert rig.stack.raw_items(rig.stack.lead_events_table) == lead_events_before
    assert rig.publish_changes() == 0
    assert _events(rig, queue) == []

    # A genuine delivery and its copy: recorded once, published once
    genuine = _lead_form(rig, 5, token=rig.emulator.application_token)
    assert json.loads(rig.post_form("/events", genuine)["body"]) == {"status": "accepted"}
    assert json.loads(rig.post_form("/events", genuine)["body"]) == {"status": "duplicate"}
    rig.publish_changes()
    assert [(e["detail-type"], e["detail"]["lead_id"]) for e in _events(rig, queue)] == [("LeadCreated", 5)]


def test_an_uninstall_arrives_as_portal_uninstalled(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.install_event()
    queue = rig.subscribe()
    rig.publish_changes()
    rig.queue_bodies(queue)
    rig.emulator.uninstall(clean=False)
    assert rig.emulator.flush_events(10)
    rig.drain_lifecycle()
    rig.publish_changes()
    (gone,) = _events(rig, queue)
    assert gone["detail-type"] == "PortalUninstalled"
    assert gone["detail"]["clean"] is False
    assert gone["detail"]["domain"] == rig.emulator.portal_domain
