"""REST conventions and the lead methods (fact sheet sections 4-5.2)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
import requests

from bitrix24_emulator import Emulator
from tests.infra.emulator.helpers import call

ISO_PORTAL = "%Y-%m-%dT%H:%M:%S%z"


def _ids(rows: list[dict[str, str]]) -> list[int]:
    return [int(row["ID"]) for row in rows]


def test_list_page_shape_numbers_as_strings_and_time_envelope(emu: Emulator, token: str) -> None:
    # When the first page is asked for with start=0
    answer = call(
        emu, "crm.lead.list", token, select=["ID", "TITLE", "OPPORTUNITY"], order={"ID": "ASC"}, start=0
    )

    # Then 50 rows come back with next/total and a full time envelope
    assert answer.status_code == 200
    body = answer.json()
    assert list(body) == ["result", "next", "total", "time"]
    assert len(body["result"]) == 50
    assert body["next"] == 50
    assert body["total"] == 300
    row = body["result"][0]
    assert set(row) == {"ID", "TITLE", "OPPORTUNITY"}
    assert isinstance(row["ID"], str)
    assert isinstance(row["OPPORTUNITY"], str)
    assert float(row["OPPORTUNITY"]) >= 0
    time_block = body["time"]
    assert set(time_block) == {
        "start",
        "finish",
        "duration",
        "processing",
        "date_start",
        "date_finish",
        "operating_reset_at",
        "operating",
    }
    # A 0.011 s call is under LoadLimiter's 0.1 s minimum: not counted
    assert time_block["operating"] == 0
    assert time_block["operating_reset_at"] > time_block["start"]
    assert datetime.strptime(time_block["date_start"], ISO_PORTAL).utcoffset() is not None


def test_start_minus_one_skips_count_total_zero_no_next(emu: Emulator, token: str) -> None:
    emu.reset()

    body = call(emu, "crm.lead.list", token, select=["ID"], order={"ID": "ASC"}, start=-1).json()

    assert len(body["result"]) == 50
    assert body["total"] == 0
    assert "next" not in body
    stats = emu.stats()
    assert stats["count_queries"] == 0
    assert stats["operating_seconds"] == pytest.approx(0.005)


def test_counted_pages_pay_per_matching_row(emu: Emulator, token: str) -> None:
    emu.reset()
    call(emu, "crm.lead.list", token, select=["ID"], start=0)
    call(emu, "crm.lead.list", token, select=["ID"], filter={">ID": 100}, start=0)
    matching = len([i for i in emu.state.leads.ids() if i > 100])

    stats = emu.stats()

    assert stats["count_queries"] == 2
    assert stats["operating_seconds"] == pytest.approx(0.01 + 20.9e-6 * (300 + matching), abs=1e-5)


def test_id_window_filters_and_gaps(emu: Emulator, token: str) -> None:
    ids = emu.state.leads.ids()
    # The seeded IDs have gaps (~10 % deleted).
    assert ids[-1] > len(ids)
    low, high = ids[10], ids[40]
    for filters, expected in [
        ({">ID": low}, [i for i in ids if i > low]),
        ({">=ID": low}, [i for i in ids if i >= low]),
        ({"<ID": high}, [i for i in ids if i < high]),
        ({"<=ID": high, ">ID": low}, [i for i in ids if low < i <= high]),
        ({"ID": low}, [low]),
        ({"=ID": high}, [high]),
        ({"@ID": [low, high]}, [low, high]),
    ]:
        body = call(
            emu, "crm.lead.list", token, select=["ID"], filter=filters, order={"ID": "ASC"}, start=-1
        ).json()
        assert _ids(body["result"]) == expected[:50], filters


def test_order_desc_and_paging_with_start(emu: Emulator, token: str) -> None:
    ids = emu.state.leads.ids()
    first = call(emu, "crm.lead.list", token, select=["ID"], order={"ID": "DESC"}, start=0).json()
    second = call(
        emu, "crm.lead.list", token, select=["ID"], order={"ID": "DESC"}, start=first["next"]
    ).json()
    assert _ids(first["result"]) + _ids(second["result"]) == sorted(ids, reverse=True)[:100]
    # The classic list pages by number: start=70 is page 2, and past the end it repeats the last page.
    floored = call(emu, "crm.lead.list", token, select=["ID"], start=70).json()
    assert _ids(floored["result"]) == ids[50:100]
    past = call(emu, "crm.lead.list", token, select=["ID"], start=10_000).json()
    assert _ids(past["result"]) == ids[300 - 50 : 300]
    assert "next" not in past
    emu.configure(start_past_end="empty")
    assert call(emu, "crm.lead.list", token, select=["ID"], start=10_000).json()["result"] == []


def test_order_by_other_fields_and_unknown_order_ignored(emu: Emulator, token: str) -> None:
    body = call(
        emu, "crm.lead.list", token, select=["ID", "DATE_MODIFY"], order={"DATE_MODIFY": "DESC"}, start=-1
    )
    stamps = [datetime.strptime(r["DATE_MODIFY"], ISO_PORTAL) for r in body.json()["result"]]
    assert stamps == sorted(stamps, reverse=True)
    ignored = call(
        emu, "crm.lead.list", token, select=["ID"], order={"NO_SUCH_FIELD": "ASC"}, start=-1
    ).json()
    assert _ids(ignored["result"]) == emu.state.leads.ids()[:50]


def test_date_modify_and_status_filters(emu: Emulator, token: str) -> None:
    everything = call(emu, "crm.lead.list", token, select=["*"], start=-1).json()["result"]
    everything += call(
        emu, "crm.lead.list", token, select=["*"], filter={">ID": everything[-1]["ID"]}, start=-1
    ).json()["result"]
    pivot = sorted(r["DATE_MODIFY"] for r in everything)[len(everything) // 2]
    pivot_time = datetime.strptime(pivot, ISO_PORTAL)

    newer = call(
        emu, "crm.lead.list", token, select=["ID", "DATE_MODIFY"], filter={">=DATE_MODIFY": pivot}, start=0
    )
    body = newer.json()
    assert all(datetime.strptime(r["DATE_MODIFY"], ISO_PORTAL) >= pivot_time for r in body["result"])
    older = call(emu, "crm.lead.list", token, select=["ID"], filter={"<=DATE_MODIFY": pivot}, start=0).json()
    assert body["total"] + older["total"] == 300 + 1  # the pivot row is in both

    for key in ("STATUS_ID", "=STATUS_ID"):
        junk = call(
            emu, "crm.lead.list", token, select=["ID", "STATUS_ID"], filter={key: "JUNK"}, start=0
        ).json()
        assert junk["total"] > 0
        assert {r["STATUS_ID"] for r in junk["result"]} == {"JUNK"}


def test_select_star_excludes_multifields_unless_named(emu: Emulator, token: str) -> None:
    star = call(emu, "crm.lead.list", token, select=["*"], start=-1).json()["result"]
    assert {
        "ID",
        "TITLE",
        "NAME",
        "LAST_NAME",
        "STATUS_ID",
        "SOURCE_ID",
        "OPPORTUNITY",
        "CURRENCY_ID",
    } <= set(star[0])
    assert {"ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY"} <= set(star[0])
    assert not any("PHONE" in row or "EMAIL" in row for row in star)
    named = call(emu, "crm.lead.list", token, select=["ID", "PHONE", "EMAIL"], start=-1).json()["result"]
    with_phone = [row for row in named if "PHONE" in row]
    assert with_phone
    assert set(with_phone[0]["PHONE"][0]) == {"ID", "VALUE_TYPE", "VALUE", "TYPE_ID"}
    assert with_phone[0]["PHONE"][0]["TYPE_ID"] == "PHONE"


def test_dates_are_iso_with_portal_offset(emu: Emulator, token: str) -> None:
    row = call(emu, "crm.lead.list", token, select=["DATE_CREATE", "DATE_MODIFY"], start=-1).json()["result"][
        0
    ]
    for value in (row["DATE_CREATE"], row["DATE_MODIFY"]):
        assert value.endswith("+03:00")
        assert datetime.strptime(value, ISO_PORTAL)
    assert row["DATE_MODIFY"] >= row["DATE_CREATE"]


def test_form_encoded_get_and_post_with_php_brackets(emu: Emulator, token: str) -> None:
    ids = emu.state.leads.ids()
    query = [
        ("auth", token),
        ("select[]", "ID"),
        ("select[]", "TITLE"),
        ("filter[>ID]", str(ids[4])),
        ("order[ID]", "ASC"),
        ("start", "-1"),
    ]
    by_get = requests.get(f"{emu.client_endpoint}crm.lead.list.json", params=query, timeout=5)
    by_post = requests.post(f"{emu.client_endpoint}crm.lead.list", data=query, timeout=5)
    auth_in_query = requests.post(
        f"{emu.client_endpoint}CRM.LEAD.LIST", params={"auth": token}, data=query[1:], timeout=5
    )
    for answer in (by_get, by_post, auth_in_query):
        assert answer.status_code == 200
        assert _ids(answer.json()["result"]) == ids[5:55]
        assert set(answer.json()["result"][0]) == {"ID", "TITLE"}


def test_crm_item_list_for_leads(emu: Emulator, token: str) -> None:
    ids = emu.state.leads.ids()
    answer = call(
        emu,
        "crm.item.list",
        token,
        entityTypeId=1,
        select=["id", "title", "stageId", "updatedTime"],
        filter={">id": ids[9]},
        order={"id": "ASC"},
        start=0,
    )
    body = answer.json()
    assert answer.status_code == 200
    items = body["result"]["items"]
    assert [item["id"] for item in items] == ids[10:60]
    assert isinstance(items[0]["id"], int)
    assert set(items[0]) == {"id", "title", "stageId", "updatedTime"}
    assert body["total"] == len(ids) - 10
    assert body["next"] == 50
    fast = call(emu, "crm.item.list", token, entityTypeId=1, select=["id"], start=-1).json()
    assert fast["total"] == 0
    assert "next" not in fast


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"entityTypeId": 1, "filter": {">ID": 5}}, "INVALID_ARG_VALUE"),
        ({"entityTypeId": 1, "order": {"nope": "ASC"}}, "INVALID_ARG_VALUE"),
        ({"entityTypeId": 1, "order": {"id": "UP"}}, "INVALID_ARG_VALUE"),
        ({"entityTypeId": 99}, "NOT_FOUND"),
    ],
)
def test_crm_item_list_refuses_bad_arguments(
    emu: Emulator, token: str, params: dict[str, object], error: str
) -> None:
    answer = call(emu, "crm.item.list", token, **params)
    assert answer.status_code == 400
    assert answer.json()["error"] == error


def test_lead_get_and_add(emu: Emulator, token: str) -> None:
    before = emu.state.leads.ids()[-1]
    added = call(
        emu,
        "crm.lead.add",
        token,
        fields={
            "TITLE": "From the test",
            "NAME": "Ada",
            "PHONE": [{"VALUE": "+1 555 0100", "VALUE_TYPE": "WORK"}],
        },
    ).json()
    assert added["result"] == before + 1
    lead = call(emu, "crm.lead.get", token, id=added["result"]).json()["result"]
    assert lead["ID"] == str(before + 1)
    assert lead["TITLE"] == "From the test"
    assert lead["PHONE"][0]["VALUE"] == "+1 555 0100"
    missing = call(emu, "crm.lead.get", token, id=before + 1000)
    assert missing.status_code == 400
    assert missing.json() == {"error": "", "error_description": "Not found"}


def test_portal_app_info_upper_case_shape(emu: Emulator, token: str) -> None:
    result = call(emu, "app.info", token).json()["result"]
    assert set(result) == {
        "ID",
        "CODE",
        "VERSION",
        "STATUS",
        "INSTALLED",
        "PAYMENT_EXPIRED",
        "DAYS",
        "LANGUAGE_ID",
        "LICENSE",
        "LICENSE_TYPE",
        "LICENSE_FAMILY",
    }
    assert result["CODE"] == emu.client_id
    assert result["INSTALLED"] is True


@pytest.mark.parametrize(
    ("auth", "status", "error"),
    [
        (None, 401, "NO_AUTH_FOUND"),
        ("not-a-token", 401, "invalid_token"),
    ],
)
def test_auth_errors(emu: Emulator, auth: str | None, status: int, error: str) -> None:
    answer = call(emu, "crm.lead.list", auth)
    assert answer.status_code == status
    body = answer.json()
    assert body["error"] == error
    assert body["error_description"]
    assert "time" not in body


def test_expired_token_and_unknown_method(emu: Emulator, token: str) -> None:
    unknown = call(emu, "crm.lead.frobnicate", token)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "ERROR_METHOD_NOT_FOUND"
    emu.clock.advance(3601)
    expired = call(emu, "crm.lead.list", token)
    assert expired.status_code == 401
    assert expired.json()["error"] == "expired_token"


def test_missing_scope_is_refused(emu_factory: Callable[..., Emulator]) -> None:
    emulator = emu_factory(scope="user")
    answer = call(emulator, "crm.lead.list", emulator.issue_tokens()["access_token"])
    assert answer.status_code == 403
    assert answer.json()["error"] == "insufficient_scope"
