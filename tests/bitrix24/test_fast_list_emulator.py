"""The headline: our fast list exports all seeded leads in at most 5 REST requests with no COUNT pages."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from b24connector.bitrix24.errors import OperationTimeLimit
from b24connector.bitrix24.list_query import ListQuery
from b24connector.bitrix24.listing import FastLister
from b24connector.bitrix24.pacing import LocalTokenBucket
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.rest import RestClient
from b24connector.bitrix24.transport import new_session
from bitrix24_emulator import Emulator, EmulatorConfig
from tests.bitrix24.emulator_fixtures import LEADS, make_policy

pytestmark = pytest.mark.integration

PortalFactory = Callable[..., PortalContext]
METHODS = ["crm.lead.list", "crm.item.list"]


def ids_of(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row["ID"] if "ID" in row else row["id"]) for row in rows]


def report(capsys: pytest.CaptureFixture[str], label: str, stats: dict[str, Any], seconds: float) -> None:
    keys = (
        "requests",
        "count_queries",
        "operating_seconds",
        "http_503",
        "http_429",
        "max_concurrent_requests",
    )
    figures = {k: stats[k] for k in keys} | {"wall_seconds": round(seconds, 3)}
    with capsys.disabled():
        print(f"\n[b24connector {label}] " + json.dumps(figures))


@pytest.mark.parametrize("case", [(v, m) for v in ("sequential", "parallel") for m in METHODS], ids=str)
def test_ten_thousand_leads_in_at_most_five_requests(
    fresh: Emulator,
    lister: FastLister,
    portal_for: PortalFactory,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str],
) -> None:
    variant, method = case
    # Given 10,000 seeded leads (IDs with gaps: 10% deleted)
    expected = fresh.state.leads.ids()
    assert len(expected) == LEADS
    portal = portal_for()
    fresh.reset()
    # When our fast list reads them all
    started = time.perf_counter()
    read = lister.iter_list if variant == "sequential" else lister.iter_list_parallel
    rows = list(
        read(
            portal,
            ListQuery(method, select=["ID", "TITLE"] if method == "crm.lead.list" else ["id", "title"]),
        )
    )
    elapsed = time.perf_counter() - started
    stats = fresh.stats()
    report(capsys, f"{method} {variant} 10k", stats, elapsed)
    # Then every ID arrives exactly once, in order, in <= 5 requests and no COUNT query
    assert ids_of(rows) == expected
    assert stats["requests"] <= 5
    assert stats["count_queries"] == 0
    assert stats["http_503"] == 0


def test_filters_and_windows_over_http(
    fresh: Emulator, lister: FastLister, portal_for: PortalFactory
) -> None:
    ids = fresh.state.leads.ids()
    low, high = ids[100], ids[4_000]
    rows = list(
        lister.iter_list(
            portal_for(), ListQuery("crm.lead.list", select=["ID"], filter={">=ID": low, "<ID": high})
        )
    )
    assert ids_of(rows) == [i for i in ids if low <= i < high]
    limited = list(
        lister.iter_list_parallel(portal_for(), ListQuery("crm.item.list", after_id=ids[10], limit=3_000))
    )
    assert ids_of(limited) == ids[11:3_011]


def test_an_operating_block_mid_export_is_reported_with_its_reset(
    fresh: Emulator, lister: FastLister, portal_for: PortalFactory
) -> None:
    # A real 429 (or a blocked batch sub-call) carries no `time` block: the reset comes from the
    # `operating_reset_at` of an earlier successful answer, so read one page first.
    portal = portal_for()
    assert len(list(lister.iter_list(portal, ListQuery("crm.lead.list", limit=50)))) == 50
    fresh.add_operating("crm.lead.list", 500)
    with pytest.raises(OperationTimeLimit) as caught:
        list(lister.iter_list(portal, ListQuery("crm.lead.list")))
    assert caught.value.reset_at is not None


@pytest.fixture(scope="module")
def big_emu() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(leads=100_000, seed=11)) as emulator:
        yield emulator


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sequential", "parallel"])
def test_one_hundred_thousand_leads(
    big_emu: Emulator, capsys: pytest.CaptureFixture[str], variant: str
) -> None:
    expected = big_emu.state.leads.ids()
    tokens = big_emu.issue_tokens()
    portal = PortalContext(tokens["client_endpoint"], tokens["access_token"])
    client = RestClient(make_policy(big_emu), session=new_session(), pacer=LocalTokenBucket(2, 50))
    lister = FastLister(client)
    big_emu.reset()
    started = time.perf_counter()
    read = lister.iter_list if variant == "sequential" else lister.iter_list_parallel
    rows = list(read(portal, ListQuery("crm.lead.list", select=["ID", "TITLE", "STATUS_ID", "DATE_MODIFY"])))
    elapsed = time.perf_counter() - started
    stats = big_emu.stats()
    report(capsys, f"crm.lead.list {variant} 100k", stats, elapsed)
    assert ids_of(rows) == expected
    assert stats["count_queries"] == 0
    assert stats["requests"] <= 42
    assert stats["http_503"] == 0
