"""Stream records to bus events: order, the first unpublished record, PutEvents chunks, lead fields."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from b24connector.events.bus import EventBus
from b24connector.events.catalogue import BusEvent
from b24connector.events.publisher import LEADS, PORTALS, FieldsUnavailable, StreamPublisher, StreamRecord


class FakeEventsClient:
    """PutEvents that can refuse entries from the n-th on."""

    def __init__(self, refuse_from: int | None = None) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.refuse_from = refuse_from
        self.accepted: list[dict[str, Any]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls.append(Entries)
        results: list[dict[str, Any]] = []
        failed = 0
        for entry in Entries:
            if self.refuse_from is not None and len(self.accepted) >= self.refuse_from:
                results.append({"ErrorCode": "InternalFailure", "ErrorMessage": "x"})
                failed += 1
            else:
                self.accepted.append(entry)
                results.append({"EventId": str(len(self.accepted))})
        return {"FailedEntryCount": failed, "Entries": results}


def lead(seq: int, lead_id: int, event: str = "ONCRMLEADADD", member: str = "m1") -> StreamRecord:
    image = {
        "event_key": f"{member}#{event}#{lead_id}#{1_800_000_000 + seq}",
        "member_id": member,
        "domain": f"{member}.bitrix24.com",
        "event": event,
        "lead_id": lead_id,
        "portal_ts": 1_800_000_000 + seq,
    }
    return StreamRecord(str(seq), LEADS, "INSERT", None, image)


def test_events_go_out_in_order_ten_per_call() -> None:
    client = FakeEventsClient()
    bus = EventBus(client, "bus-1")
    assert StreamPublisher(bus).publish([lead(i, 100 + i) for i in range(25)]) is None
    assert [len(call) for call in client.calls] == [10, 10, 5]
    assert [int(json.loads(e["Detail"])["lead_id"]) for e in client.accepted] == list(range(100, 125))
    assert {e["Source"] for e in client.accepted} == {"b24connector"}
    assert {e["EventBusName"] for e in client.accepted} == {"bus-1"}
    assert {e["DetailType"] for e in client.accepted} == {"LeadCreated"}


def test_the_first_refused_event_is_where_the_stream_retries_from() -> None:
    client = FakeEventsClient(refuse_from=13)
    publisher = StreamPublisher(EventBus(client, "bus"))
    assert publisher.publish([lead(i, 100 + i) for i in range(25)]) == "13"
    assert len(client.calls) == 2  # nothing after the failed call was sent ahead of it


def test_ttl_removals_and_foreign_items_publish_nothing() -> None:
    client = FakeEventsClient()
    removal = StreamRecord("1", LEADS, "REMOVE", lead(1, 5).new, None)
    foreign = StreamRecord("2", LEADS, "INSERT", None, {"event": "ONCRMDEALADD", "member_id": "m1"})
    unknown_table = StreamRecord("3", "", "INSERT", None, lead(3, 5).new)
    assert StreamPublisher(EventBus(client, "bus")).publish([removal, foreign, unknown_table]) is None
    assert client.calls == []


def test_portal_records_become_lifecycle_events() -> None:
    client = FakeEventsClient()
    new = {"member_id": "m1", "version": 1, "health": "active", "grant_digests": ["g"], "grant_role": "admin"}
    StreamPublisher(EventBus(client, "bus")).publish([StreamRecord("1", PORTALS, "INSERT", None, new)])
    assert [e["DetailType"] for e in client.accepted] == ["PortalConnected"]


class Reader:
    def __init__(self, fail_for: str | None = None) -> None:
        self.reads: list[tuple[str, list[int]]] = []
        self.fail_for = fail_for

    def read(
        self, member_id: str, lead_ids: Sequence[int], fields: Sequence[str]
    ) -> dict[int, dict[str, Any]]:
        self.reads.append((member_id, list(lead_ids)))
        if member_id == self.fail_for:
            raise FieldsUnavailable("rate_limited")
        return {i: {"ID": str(i), "TITLE": f"Lead {i}"} for i in lead_ids if i % 2 == 0}


def test_lead_fields_are_read_once_per_portal_per_batch_and_best_effort() -> None:
    client = FakeEventsClient()
    reader = Reader(fail_for="m2")
    records = [lead(i, 100 + i) for i in range(4)] + [
        lead(9, 300, member="m2"),
        lead(10, 100, "ONCRMLEADDELETE"),
    ]
    StreamPublisher(EventBus(client, "bus"), fields=("TITLE",), reader=reader).publish(records)
    assert reader.reads == [("m1", [100, 101, 102, 103]), ("m2", [300])]
    details = [json.loads(e["Detail"]) for e in client.accepted]
    assert [d.get("fields_status") for d in details] == [
        "ok",
        "not_found",
        "ok",
        "not_found",
        "rate_limited",
        None,
    ]
    assert details[0]["fields"] == {"ID": "100", "TITLE": "Lead 100"}
    assert "fields" not in details[5]  # LeadDeleted never reads


def test_more_than_500_leads_of_one_portal_are_read_in_parts() -> None:
    reader = Reader()
    StreamPublisher(EventBus(FakeEventsClient(), "bus"), fields=("TITLE",), reader=reader).publish(
        [lead(i, 1 + i) for i in range(1_200)]
    )
    assert [len(ids) for _, ids in reader.reads] == [500, 500, 200]


def test_an_oversized_detail_drops_its_fields() -> None:
    from b24connector.events import catalogue

    event = BusEvent("LeadCreated", {"member_id": "m", "lead_id": 1})
    big = catalogue.with_fields(event, {"COMMENTS": "x" * 300_000}, "ok")
    assert "fields" not in big.detail
    assert big.detail["fields_status"] == "too_large"


def test_the_handler_never_decodes_binaries_and_reads_numbers_as_ints() -> None:
    from b24connector.handlers.publisher import records_of
    from b24connector.settings import load_settings

    conf = load_settings(
        {
            "BITRIX24_CLIENT_ID": "c", "CLIENT_SECRET_ID": "s", "CURSOR_SECRET_ID": "k", "PORTALS_TABLE": "portals",
            "STATES_TABLE": "st", "RATE_LIMIT_TABLE": "rl", "TOKEN_KEY_ID": "key", "REFRESH_QUEUE_URL": "q1",
            "RESCUE_QUEUE_URL": "q2", "LIFECYCLE_QUEUE_URL": "q3", "LEAD_EVENTS_TABLE": "leads-out",
        }
    )  # fmt: skip
    arn = "arn:aws:dynamodb:eu-central-1:123456789012:table/portals/stream/2026"
    event = {
        "Records": [
            {
                "eventName": "MODIFY",
                "eventSourceARN": arn,
                "dynamodb": {
                    "SequenceNumber": "11",
                    "NewImage": {
                        "member_id": {"S": "m"},
                        "version": {"N": "3"},
                        "token_ciphertext": {"B": "c2VhbGVk"},
                    },
                    "OldImage": {"member_id": {"S": "m"}, "version": {"N": "2"}},
                },
            },
            {
                "eventName": "INSERT",
                "eventSourceARN": arn.replace("portals", "leads-out"),
                "dynamodb": {"SequenceNumber": "12"},
            },
        ]
    }
    first, second = records_of(conf, event)
    assert (first.table, second.table) == ("portals", "leads")
    assert first.new == {"member_id": "m", "version": 3}
    assert first.old == {"member_id": "m", "version": 2}
