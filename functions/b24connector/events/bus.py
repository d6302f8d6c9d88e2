"""The EventBridge adapter: PutEvents on the stack's bus, 10 entries (and under 256 KB) per call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from b24connector.events.catalogue import SOURCE, BusEvent

_MAX_ENTRIES = 10  # PutEvents takes at most 10 entries
_MAX_CALL_BYTES = 240_000  # under the 256 KB request limit, with room for the envelope


class EventBus:
    """Puts catalogue events on one bus."""

    def __init__(self, client: Any, bus_name: str) -> None:
        self._client = client
        self._bus = bus_name

    def put(self, events: Sequence[BusEvent]) -> int:
        """Publish `events` in order; the index of the first one not accepted, or len(events).

        Stops at the first call with a failed entry, so the caller retries from there and nothing after
        it was published ahead of it (beyond that call's own accepted entries).
        """
        done = 0
        for chunk in _chunks([self._entry(event) for event in events]):  # each detail serialized once
            answer = self._client.put_events(Entries=chunk)
            if int(answer.get("FailedEntryCount") or 0):
                results = answer.get("Entries") or []
                for offset, result in enumerate(results):
                    if result.get("ErrorCode"):
                        return done + offset
                return done
            done += len(chunk)
        return done

    def _entry(self, event: BusEvent) -> dict[str, Any]:
        return {
            "Source": SOURCE,
            "DetailType": event.detail_type,
            "Detail": event.detail_json(),
            "EventBusName": self._bus,
        }


def _chunks(entries: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """PutEvents calls in order: at most 10 entries and under the request size limit each."""
    start, size = 0, 0
    for index, entry in enumerate(entries):
        weight = len(entry["Detail"]) + len(entry["DetailType"]) + len(SOURCE) + 64
        if index > start and (index - start >= _MAX_ENTRIES or size + weight > _MAX_CALL_BYTES):
            yield entries[start:index]
            start, size = index, 0
        size += weight
    if start < len(entries):
        yield entries[start:]
