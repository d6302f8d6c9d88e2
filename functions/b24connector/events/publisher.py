"""Stream records (PortalsTable, LeadEventsTable) to catalogue events on the bus, in order.

A batch is published in stream order; the first record whose event the bus did not take is answered
as the batch's failure, so Lambda retries from it (and the records before it are not published
again). Lead fields, when configured, are read for the whole batch at once: one LeadsFunction read per
portal and up to 500 leads, paced by the shared per-portal bucket there. Reading them is best effort:
an event whose fields could not be read is still published, with `fields_status` saying why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from b24connector.events import catalogue
from b24connector.events.catalogue import LEAD_CREATED, LEAD_UPDATED, BusEvent
from b24connector.events.portal_changes import portal_events
from b24connector.numbers import ascii_int
from b24connector.observability import count, logger

PORTALS = "portals"
LEADS = "leads"
MAX_IDS_PER_READ = 500  # LeadsFunction's filter lists hold at most 500 values


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One DynamoDB stream record, its images deserialized."""

    sequence: str
    table: str  # PORTALS or LEADS
    name: str  # INSERT, MODIFY or REMOVE
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None


class Bus(Protocol):
    """events.bus.EventBus."""

    def put(self, events: Sequence[BusEvent]) -> int:
        """Publish in order; the index of the first event not accepted, or len(events)."""
        ...


class FieldsUnavailable(Exception):
    """The lead fields could not be read now (the event goes out without them)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class FieldsReader(Protocol):
    """Reads leads' fields (events.enrichment.LeadsFunctionFields)."""

    def read(
        self, member_id: str, lead_ids: Sequence[int], fields: Sequence[str]
    ) -> dict[int, dict[str, Any]]:
        """The rows found, by lead id; FieldsUnavailable when the portal could not be read."""
        ...


def lead_event(image: Mapping[str, Any]) -> BusEvent | None:
    """The Lead* event an outbox item stands for (None for an item this code did not write)."""
    name = str(image.get("event") or "")
    member_id = image.get("member_id")
    lead_id = ascii_int(image.get("lead_id"), minimum=1)
    portal_ts = ascii_int(image.get("portal_ts"), minimum=1)
    if (
        name not in catalogue.LEAD_DETAIL_TYPES
        or not isinstance(member_id, str)
        or not lead_id
        or not portal_ts
    ):
        return None
    domain = image.get("domain")
    return catalogue.lead_changed(
        name,
        member_id,
        domain if isinstance(domain, str) else None,
        lead_id=lead_id,
        portal_ts=portal_ts,
        key=str(image.get("event_key") or ""),
    )


class StreamPublisher:
    """Turns a batch of stream records into bus events and publishes them."""

    def __init__(self, bus: Bus, *, fields: Sequence[str] = (), reader: FieldsReader | None = None) -> None:
        self._bus = bus
        self._fields = tuple(fields)
        self._reader = reader if self._fields else None

    def publish(self, records: Sequence[StreamRecord]) -> str | None:
        """Publish the batch; the sequence number to retry from, or None when everything went out."""
        pending: list[tuple[str, BusEvent]] = []
        for record in records:
            pending += [(record.sequence, event) for event in self._events_of(record)]
        if not pending:
            return None
        events = self._enriched([event for _, event in pending])
        done = self._bus.put(events)
        published = events[:done]
        for event in published:
            count(f"Published{event.detail_type}")
        if published:
            count("EventsPublished", len(published))
        if done < len(events):
            count("EventsNotPublished", len(events) - done)
            logger.warning("events not published; retried from the first", extra={"published": done})
            return pending[done][0]
        return None

    @staticmethod
    def _events_of(record: StreamRecord) -> list[BusEvent]:
        if record.table == PORTALS:
            return portal_events(record.old, record.new)
        if record.table == LEADS and record.name == "INSERT" and record.new is not None:
            event = lead_event(record.new)
            return [event] if event is not None else []
        return []  # TTL removals of outbox items, and anything else

    def _enriched(self, events: list[BusEvent]) -> list[BusEvent]:
        if self._reader is None:
            return events
        wanted: dict[str, list[int]] = {}
        for event in events:
            if event.detail_type in (LEAD_CREATED, LEAD_UPDATED):
                ids = wanted.setdefault(str(event.detail["member_id"]), [])
                if event.detail["lead_id"] not in ids:
                    ids.append(int(event.detail["lead_id"]))
        found, failed = self._read_fields(self._reader, wanted)
        return [_with_fields(event, found, failed) for event in events]

    def _read_fields(
        self, reader: FieldsReader, wanted: dict[str, list[int]]
    ) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, str]]:
        """The rows read, by (member_id, lead id), and why a portal could not be read."""
        found: dict[tuple[str, int], dict[str, Any]] = {}
        failed: dict[str, str] = {}
        for member_id, ids in wanted.items():
            for start in range(0, len(ids), MAX_IDS_PER_READ):
                try:
                    rows = reader.read(member_id, ids[start : start + MAX_IDS_PER_READ], self._fields)
                except FieldsUnavailable as exc:
                    failed[member_id] = exc.status
                    count("LeadFieldsUnavailable")
                    continue
                found.update({(member_id, lead_id): row for lead_id, row in rows.items()})
        return found, failed


def _with_fields(
    event: BusEvent, found: dict[tuple[str, int], dict[str, Any]], failed: dict[str, str]
) -> BusEvent:
    if event.detail_type not in (LEAD_CREATED, LEAD_UPDATED):
        return event
    member_id, lead_id = str(event.detail["member_id"]), int(event.detail["lead_id"])
    if (member_id, lead_id) in found:
        return catalogue.with_fields(event, found[(member_id, lead_id)], "ok")
    return catalogue.with_fields(event, None, failed.get(member_id, "not_found"))
