"""batch: shape, limits, halt, $result references, and the ID-window chain's cost (fact sheet section 5.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from bitrix24_emulator import Emulator
from tests.infra.emulator.helpers import call

LIST = "crm.lead.list?order[ID]=ASC&select[]=ID&start=-1"


def _chain_commands(first_id: int | str, size: int = 50) -> dict[str, str]:
    commands = {"c0": f"{LIST}&filter[>ID]={first_id}"}
    for i in range(1, size):
        commands[f"c{i}"] = f"{LIST}&filter[>ID]=$result[c{i - 1}][49][ID]"
    return commands


def _batch(emu: Emulator, token: str, cmd: Any, halt: int = 0) -> requests.Response:
    return call(emu, "batch", token, halt=halt, cmd=cmd)


def test_batch_shape_and_php_empty_containers(emu: Emulator, token: str) -> None:
    answer = _batch(emu, token, {"a": "app.info", "b": "crm.lead.list?select[]=ID&start=-1"})

    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"result", "time"}
    inner = body["result"]
    assert set(inner) == {"result", "result_error", "result_total", "result_next", "result_time"}
    assert set(inner["result"]) == {"a", "b"}
    assert inner["result"]["a"]["CODE"] == emu.client_id
    assert len(inner["result"]["b"]) == 50
    # No errors and no next: empty PHP arrays serialize as [] (not {})
    assert inner["result_error"] == []
    assert inner["result_next"] == []
    assert inner["result_total"] == {"b": 0}
    assert set(inner["result_time"]["b"]) >= {
        "start",
        "finish",
        "duration",
        "operating",
        "operating_reset_at",
    }


def test_batch_counts_next_and_total_per_command(emu: Emulator, token: str) -> None:
    inner = _batch(emu, token, {"p": "crm.lead.list?select[]=ID&start=0"}).json()["result"]
    assert inner["result_total"] == {"p": 300}
    assert inner["result_next"] == {"p": 50}


def test_numeric_labels_make_php_lists(emu: Emulator, token: str) -> None:
    form = [("auth", token), ("cmd[0]", "app.info"), ("cmd[1]", "app.info")]
    inner = requests.post(f"{emu.client_endpoint}batch", data=form, timeout=5).json()["result"]
    assert isinstance(inner["result"], list)
    assert len(inner["result"]) == 2


def test_result_reference_chains_an_id_window(emu: Emulator, token: str) -> None:
    ids = emu.state.leads.ids()

    inner = _batch(emu, token, _chain_commands(0, size=6)).json()["result"]

    got = [int(row["ID"]) for label in [f"c{i}" for i in range(6)] for row in inner["result"][label]]
    assert got == ids[:300]
    assert inner["result_error"] == []


def test_items_reference_for_crm_item_list(emu: Emulator, token: str) -> None:
    ids = emu.state.leads.ids()
    item = "crm.item.list?entityTypeId=1&order[id]=ASC&select[]=id&start=-1"
    cmd = {"a": f"{item}&filter[>id]=0", "b": f"{item}&filter[>id]=$result[a][items][49][id]"}

    inner = _batch(emu, token, cmd).json()["result"]

    assert [i["id"] for i in inner["result"]["b"]["items"]] == ids[50:100]


def test_form_encoded_batch_with_double_encoding(emu: Emulator, token: str) -> None:
    # cmd values are URL-encoded "method?query" strings inside a form (data-encoding.md)
    form = [
        ("auth", token),
        ("halt", "0"),
        ("cmd[first]", "crm.lead.list?select%5B%5D=ID&filter%5B%3E%3DID%5D=1&start=-1"),
        ("cmd[second]", "crm.lead.list?select[]=ID&filter[>ID]=$result[first][49][ID]&start=-1"),
    ]
    inner = requests.post(f"{emu.client_endpoint}batch", data=form, timeout=5).json()["result"]
    ids = emu.state.leads.ids()
    assert [int(r["ID"]) for r in inner["result"]["second"]] == ids[50:100]


def test_reference_to_a_missing_row_substitutes_the_parent_array(
    emu_factory: Callable[..., Emulator],
) -> None:
    # Given 60 leads: c0 returns 50 rows, c1 returns 10, c2 references c1's 50th row which does not exist
    emulator = emu_factory(leads=60)
    token = emulator.issue_tokens()["access_token"]
    ids = emulator.state.leads.ids()

    # When the chain runs with the server's substitution (the default)
    inner = _batch(emulator, token, _chain_commands(0, size=3)).json()["result"]

    # Then c2's `filter[>ID]` gets c1's whole page, which CRM casts to 1: the list restarts near the top
    assert len(inner["result"]["c1"]) == 10
    assert [int(r["ID"]) for r in inner["result"]["c2"]] == [i for i in ids if i > 1][:50]


def test_reference_roots_are_result_next_total_time_error(emu: Emulator, token: str) -> None:
    # Given a first command with a total and a next offset
    cmd = {
        "a": "crm.lead.list?select[]=ID&start=0",
        "b": "crm.lead.get?id=$result[a][0][ID]",
        "c": "crm.lead.list?select[]=ID&start=$next[a]",
        "d": "crm.lead.list?select[]=ID&start=-1&filter[<ID]=$total[a]",
        "e": "crm.lead.get?id=$result_total[a][1][ID]",
    }
    ids = emu.state.leads.ids()

    inner = _batch(emu, token, cmd).json()["result"]

    assert inner["result"]["b"]["ID"] == str(ids[0])
    assert [int(r["ID"]) for r in inner["result"]["c"]] == ids[50:100]
    assert all(int(r["ID"]) < len(ids) for r in inner["result"]["d"])
    # `$result_total[...]` is root `result` followed by `_total[a][1][ID]` (the server's regex)
    assert inner["result"]["e"]["ID"] == str(ids[1])


def test_missing_reference_settings(emu_factory: Callable[..., Emulator]) -> None:
    # The older readings stay available as switches: "" then the empty filter dropped, or matching nothing
    emulator = emu_factory(leads=60, batch_missing_reference="empty")
    token = emulator.issue_tokens()["access_token"]
    ids = emulator.state.leads.ids()
    inner = _batch(emulator, token, _chain_commands(0, size=3)).json()["result"]
    assert [int(r["ID"]) for r in inner["result"]["c2"]] == ids[:50]

    emulator.configure(empty_filter_value="match_none")
    inner = _batch(emulator, token, _chain_commands(0, size=3)).json()["result"]
    assert inner["result"]["c2"] == []

    emulator.configure(batch_missing_reference="error")
    inner = _batch(emulator, token, _chain_commands(0, size=3)).json()["result"]
    assert "c2" not in inner["result"]
    assert inner["result_error"]["c2"]["error"] == "ERROR_BATCH_REFERENCE"


def test_halt_stops_at_the_first_error(emu: Emulator, token: str) -> None:
    cmd = {"a": "app.info", "b": "no.such.method", "c": "app.info"}

    kept_going = _batch(emu, token, cmd, halt=0).json()["result"]
    halted = _batch(emu, token, cmd, halt=1).json()["result"]

    assert set(kept_going["result"]) == {"a", "c"}
    assert kept_going["result_error"]["b"]["error"] == "ERROR_METHOD_NOT_FOUND"
    assert set(halted["result"]) == {"a"}
    assert set(halted["result_error"]) == {"b"}


def test_more_than_50_commands_is_refused(emu: Emulator, token: str) -> None:
    answer = _batch(emu, token, {f"c{i}": "app.info" for i in range(51)})
    assert answer.status_code == 400
    assert answer.json()["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"
    assert _batch(emu, token, {f"c{i}": "app.info" for i in range(50)}).status_code == 200


def test_nested_batch_is_refused(emu: Emulator, token: str) -> None:
    answer = _batch(emu, token, {"a": "app.info", "b": "batch?cmd[x]=app.info"})
    assert answer.status_code == 405
    assert answer.json()["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"


def test_batch_is_one_request_and_charges_each_method(emu: Emulator, token: str) -> None:
    emu.reset()
    _batch(emu, token, {"a": "app.info", "b": "crm.lead.list?start=0", "c": "crm.lead.list?start=-1"})
    stats = emu.stats()
    assert stats["requests"] == 1
    assert stats["count_queries"] == 1
    assert stats["methods"]["crm.lead.list"]["calls"] == 2
    assert stats["methods"]["app.info"]["calls"] == 1
    assert stats["methods"]["batch"]["operating_seconds"] == 0
    assert stats["operating_seconds"] == pytest.approx(0.005 * 3 + 20.9e-6 * 300, abs=1e-5)


@pytest.mark.slow
def test_reference_figures_for_100k_leads(emu_factory: Callable[..., Emulator]) -> None:
    # Given 100,000 leads
    emulator = emu_factory(leads=100_000)
    token = emulator.issue_tokens()["access_token"]
    session = requests.Session()

    # When a client walks the ID window 50 pages per batch, stopping at the first short page
    last, seen = 0, []
    while True:
        body = session.post(
            f"{emulator.client_endpoint}batch",
            json={"auth": token, "halt": 0, "cmd": _chain_commands(last)},
            timeout=30,
        ).json()["result"]
        done = False
        for i in range(50):
            rows = body["result"].get(f"c{i}") or []
            seen += [int(r["ID"]) for r in rows]
            if len(rows) < 50:
                done = True
                break
        if done:
            break
        last = seen[-1]

    # Then: every lead once, 41 requests, no COUNT, ~10 modeled seconds
    assert seen == emulator.state.leads.ids()
    stats = emulator.stats()
    assert stats["requests"] == 41
    assert stats["count_queries"] == 0
    assert stats["operating_seconds"] == pytest.approx(41 * 50 * 0.005)
