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
        for chunk in self._chunks(events):
            answer = self._client.put_events(Entries=[self._entry(e) for e in chunk])
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

    def _chunks(self, events: Sequence[BusEvent]) -> Iterator[Sequence[BusEvent]]:
        start, size = 0, 0
        for index, event in enumerate(events):
            weight = len(event.detail_json()) + len(event.detail_type) + len(SOURCE) + 64
            if index > start and (index - start >= _MAX_ENTRIES or size + weight > _MAX_CALL_BYTES):
                yield events[start:index]
                start, size = index, 0
            size += weight
        if start < len(events):
            yield events[start:]
