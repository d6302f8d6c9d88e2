"""LeadsFunction's change query against the emulated portal: (DATE_MODIFY, ID) order, checkpoints that
skip and repeat nothing at equal timestamps, strict validation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.support.rig import Rig


def _changes(rig: Rig, limit: int, **start: str) -> tuple[list[int], int]:
    """Every lead the change query answers from `start`, following checkpoints; (ids, invocations)."""
    ids: list[int] = []
    request = {"member_id": rig.emulator.member_id, "select": ["ID", "DATE_MODIFY"], "limit": limit, **start}
    for calls in range(1, 500):
        answer = rig.leads(request)
        assert "error" not in answer, answer
        ids += [int(row["ID"]) for row in answer["leads"]]
        if not answer["more"]:
            return ids, calls
        request = {"member_id": rig.emulator.member_id, "select": ["ID", "DATE_MODIFY"], "limit": limit,
                   "checkpoint": answer["checkpoint"]}  # fmt: skip
    raise AssertionError("the checkpoints never ended")


def test_changes_come_in_order_once_even_when_hundreds_share_a_second(
    rig_factory: Callable[..., Rig],
) -> None:
    # Given a portal whose leads were modified over time, 180 of them in one second (an import)
    rig = rig_factory(emulator={"leads": 600})
    rig.install_event()
    state = rig.emulator.state
    with state.lock:
        rows = list(state.leads._rows)
        base = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
        for index, row in enumerate(rows):
            row.date_modify = base + 3600 + (index % 7) * 60 if index % 3 else base + 7200
        state.leads._touch()
        expected = [r.id for r in sorted(rows, key=lambda r: (r.date_modify, r.id))]

    # When a subscriber reads every change since before them, 37 at a time, by checkpoint
    ids, calls = _changes(rig, 37, changed_since="2026-10-31T00:00:00+00:00")

    # Then every lead comes exactly once, in (DATE_MODIFY, ID) order, across the tied second
    assert ids == expected
    assert calls == -(-len(expected) // 37) or calls == -(-len(expected) // 37) + 1

    # And from a checkpoint in the middle of the tied second, the rest comes once
    answer = rig.leads({"member_id": rig.emulator.member_id, "changed_since": "2026-10-31T00:00:00+00:00",
                        "limit": 300, "select": ["ID"]})  # fmt: skip
    later, _ = _changes(rig, 50, checkpoint=answer["checkpoint"])
    assert [int(r["ID"]) for r in answer["leads"]] + later == expected


def test_nothing_changed_since_is_an_empty_answer(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(emulator={"leads": 50})
    rig.install_event()
    answer = rig.leads({"member_id": rig.emulator.member_id, "changed_since": "2099-01-01T00:00:00+00:00"})
    assert (answer["leads"], answer["more"]) == ([], False)


@pytest.mark.parametrize(
    "broken",
    [
        {"changed_since": "yesterday"},
        {"changed_since": "2026-12-01T00:00:00+00:00", "checkpoint": "x"},
        {"checkpoint": "not-a-checkpoint"},
        {"checkpoint": "eyJ2IjoxLCJ0IjoiMjAyNiIsImlkIjoxfQ"},  # a checkpoint whose time is not ISO 8601
        {"changed_since": "2026-12-01T00:00:00Z", "limit": 0},
        {"changed_since": "2026-12-01T00:00:00Z", "limit": "5"},
        {"changed_since": "2026-12-01T00:00:00Z", "select": ["TITLE; DROP"]},
        {"changed_since": "2026-12-01T00:00:00Z", "filter": {"ID": 1}},
    ],
)
def test_bad_change_queries_are_invalid_requests(
    rig_factory: Callable[..., Rig], broken: dict[str, object]
) -> None:
    rig = rig_factory(emulator={"leads": 10})
    answer = rig.leads({"member_id": rig.emulator.member_id, **broken})
    assert answer["error"]["code"] == "INVALID_REQUEST", answer
