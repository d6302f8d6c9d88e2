"""Lead deliveries: parsed strictly, authenticated by the stored application token, recorded once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from b24connector.events.lead_changes import LeadDeliveryDesk, LeadOutcome, parse_lead_delivery
from b24connector.events.outbox import OutboxItem
from b24connector.problems import Problem, ProblemKind
from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.hashing import hash_secret

APP_TOKEN = "51856fefc120afa4b628cc82d3935cce"


@dataclass
class StoredPortal:
    member_id: str = "m1"
    domain: str | None = "acme.bitrix24.com"
    health: str = "active"
    application_token_hash: str | None = hash_secret(APP_TOKEN)


class Portals:
    def __init__(self, *portals: StoredPortal) -> None:
        self.portals = {p.member_id: p for p in portals}
        self.fail = False

    def get(self, member_id: str, *, consistent: bool = False) -> StoredPortal | None:
        if self.fail:
            raise VaultUnavailable("down")
        return self.portals.get(member_id)


class Outbox:
    def __init__(self) -> None:
        self.items: dict[str, OutboxItem] = {}

    def record(self, item: OutboxItem, *, now: float, ttl_seconds: int) -> bool:
        assert ttl_seconds == 86_400
        if item.key in self.items:
            return False
        self.items[item.key] = item
        return True


def form(event: str = "ONCRMLEADADD", **auth: str) -> dict[str, Any]:
    """A delivery as web.http folds it (docs/bitrix24-facts.md#f-events-7: the captured shape)."""
    return {
        "event": event,
        "event_handler_id": "58",
        "data": {"FIELDS": {"ID": "134806"}},
        "ts": "1727018926",
        "auth": {
            "access_token": "be45f0660071849a0058f18a000000010000077261ef50fc",
            "expires": "1727022526",
            "expires_in": "3600",
            "scope": "crm,placement,user_brief",
            "domain": "acme.bitrix24.com",
            "member_id": "m1",
            "user_id": "1",
            "application_token": APP_TOKEN,
            **auth,
        },
    }


def desk(portals: Portals | None = None, outbox: Outbox | None = None, **kw: Any) -> LeadDeliveryDesk:
    return LeadDeliveryDesk(
        portals or Portals(StoredPortal()),
        outbox if outbox is not None else Outbox(),
        published=kw.get("published", ("ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADDELETE")),
        dedup_seconds=86_400,
        clock=lambda: 1_727_018_930.0,
    )


def test_an_authentic_delivery_is_recorded_once_and_copies_are_duplicates() -> None:
    outbox = Outbox()
    use_case = desk(outbox=outbox)
    assert use_case.accept(parse_lead_delivery(form())) is LeadOutcome.ACCEPTED
    # Bitrix24 sends one copy per bound row (different event_handler_id, same ts): recorded once.
    copy = form()
    copy["event_handler_id"] = "59"
    assert use_case.accept(parse_lead_delivery(copy)) is LeadOutcome.DUPLICATE
    (item,) = outbox.items.values()
    assert (item.member_id, item.domain, item.event, item.lead_id, item.portal_ts) == (
        "m1", "acme.bitrix24.com", "ONCRMLEADADD", 134806, 1727018926
    )  # fmt: skip
    # The employee's access token is in no field of what is recorded.
    assert "be45f066" not in repr(item)


@pytest.mark.parametrize(
    ("portal", "token"),
    [
        (StoredPortal(), "forged-token"),  # a wrong application token
        (StoredPortal(application_token_hash=None), APP_TOKEN),  # no verifier stored (a user grant)
        (StoredPortal(health="uninstalled"), APP_TOKEN),  # an uninstalled portal
        (StoredPortal(health="needs_reauth"), APP_TOKEN),  # not active
        (StoredPortal(member_id="other"), APP_TOKEN),  # an unknown portal
    ],
)
def test_an_unproven_delivery_is_403_and_records_nothing(portal: StoredPortal, token: str) -> None:
    outbox = Outbox()
    with pytest.raises(Problem) as refused:
        desk(Portals(portal), outbox).accept(parse_lead_delivery(form(application_token=token)))
    assert refused.value.kind is ProblemKind.FORBIDDEN
    assert refused.value.reason == "event_unauthenticated"
    assert outbox.items == {}


def test_an_event_not_published_is_ignored_after_authentication() -> None:
    outbox = Outbox()
    use_case = desk(outbox=outbox, published=("ONCRMLEADADD",))
    assert use_case.accept(parse_lead_delivery(form("ONCRMLEADDELETE"))) is LeadOutcome.IGNORED
    assert outbox.items == {}
    with pytest.raises(Problem):
        use_case.accept(parse_lead_delivery(form("ONCRMLEADDELETE", application_token="x")))


def test_storage_down_is_503_not_500() -> None:
    portals = Portals(StoredPortal())
    portals.fail = True
    with pytest.raises(Problem) as failed:
        desk(portals).accept(parse_lead_delivery(form()))
    assert failed.value.kind is ProblemKind.UNAVAILABLE


@pytest.mark.parametrize(
    "broken",
    [
        {"data": {"FIELDS": {"ID": "²"}}},
        {"data": {"FIELDS": {"ID": "0"}}},
        {"data": {}},
        {"data": "x"},
        {"ts": "٣"},
        {"ts": "9" * 40},
        {"auth": "x"},
        {"auth": {"member_id": "m1"}},
        {"auth": {"member_id": "m 1", "application_token": APP_TOKEN}},
        {"auth": {"member_id": "m1", "application_token": "a b"}},
        {"event": "ONCRMDEALADD"},
    ],
)
def test_malformed_deliveries_are_400(broken: dict[str, Any]) -> None:
    with pytest.raises(Problem) as refused:
        parse_lead_delivery({**form(), **broken})
    assert refused.value.kind is ProblemKind.INVALID
