"""FastLister: chain building, short-page cut, ID windows, parallel merge, limits and error handling."""

from __future__ import annotations

import random
from typing import Any

import pytest

from b24connector.bitrix24.errors import OperationTimeLimit, QueryLimitExceeded, ServerError, TransientError
from b24connector.bitrix24.list_query import ListQuery, Window, list_spec, make_window, max_id_params
from b24connector.bitrix24.listing import FastLister
from tests.bitrix24.fakes import FakeCrm, FakeTime, Reply, make_client, make_portal, php_parse, time_block


def lister_for(crm: FakeCrm, fake_time: FakeTime) -> FastLister:
    return FastLister(make_client(crm.transport, fake_time), sleep=fake_time.sleep, rand=lambda: 0.5)


def ids_of(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row.get("ID", row.get("id"))) for row in rows]


def dense(n: int) -> list[int]:
    return list(range(1, n + 1))


def with_gaps(n: int, seed: int = 7, ratio: float = 0.1) -> list[int]:
    rng = random.Random(seed)
    ids: list[int] = []
    candidate = 0
    while len(ids) < n:
        candidate += 1
        if rng.random() >= ratio:
            ids.append(candidate)
    return ids


# --- chain building ------------------------------------------------------------------------------


def test_first_batch_chains_fifty_pages_through_result_references(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(10))
    list(
        lister_for(crm, fake_time).iter_list(
            make_portal(), ListQuery("crm.lead.list", select=["TITLE"], after_id=3)
        )
    )
    [commands] = crm.batches
    assert list(commands) == [f"c{k}" for k in range(50)]
    first = php_parse(commands["c0"].partition("?")[2])
    assert commands["c0"].startswith("crm.lead.list?")
    assert first == {
        "order": {"ID": "ASC"},
        "filter": {">ID": "3"},
        "select": ["ID", "TITLE"],
        "start": "-1",
    }
    for k in range(1, 50):
        params = php_parse(commands[f"c{k}"].partition("?")[2])
        assert params["filter"] == {">ID": f"$result[c{k - 1}][49][ID]"}
        assert params["start"] == "-1"
    # Keys keep literal brackets; the reference value is escaped like any value (PHP decodes it first).
    assert "filter[%3EID]=%24result%5Bc0%5D%5B49%5D%5BID%5D" in commands["c1"]


def test_item_list_chain_uses_items_path_and_entity_type(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(10))
    rows = list(
        lister_for(crm, fake_time).iter_list(make_portal(), ListQuery("crm.item.list", select=["title"]))
    )
    assert ids_of(rows) == dense(10)
    commands = crm.batches[0]
    first = php_parse(commands["c0"].partition("?")[2])
    assert first["entityTypeId"] == "1"
    assert first["order"] == {"id": "ASC"}
    assert first["select"] == ["id", "title"]
    assert php_parse(commands["c1"].partition("?")[2])["filter"] == {">id": "$result[c0][items][49][id]"}


def test_unsupported_methods_are_refused() -> None:
    with pytest.raises(ValueError, match="fast listing supports"):
        list_spec("crm.lead.get")


# --- whole exports ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "requests"),
    [
        ([], 1),
        (dense(1), 1),
        (dense(49), 1),
        (dense(50), 1),  # one full page, then an empty one in the same batch
        (dense(2_499), 1),
        (dense(2_500), 2),  # every page full: one more request to see the end
        (dense(10_000), 5),
        (with_gaps(10_000), 5),
        (with_gaps(7_777, seed=3, ratio=0.5), 4),
    ],
)
def test_sequential_export_reads_every_id_once_without_counting(
    fake_time: FakeTime, ids: list[int], requests: int
) -> None:
    crm = FakeCrm(ids)
    rows = list(
        lister_for(crm, fake_time).iter_list(
            make_portal(), ListQuery("crm.lead.list", select=["ID", "TITLE"])
        )
    )
    assert ids_of(rows) == ids
    assert crm.count_pages == 0
    assert crm.requests == requests


def test_short_page_cuts_the_chain_even_though_the_server_restarts_it(fake_time: FakeTime) -> None:
    # Given 120 leads: page c2 is short, so c3's reference points at a missing row, the server
    # substitutes "" and the dropped condition makes c3..c49 restart from the first lead
    crm = FakeCrm(dense(120))
    rows = list(lister_for(crm, fake_time).iter_list(make_portal(), ListQuery("crm.lead.list")))
    # Then the client stops at c2 and yields every lead exactly once
    assert crm.junk_rows > 0
    assert ids_of(rows) == dense(120)
    assert crm.requests == 1


@pytest.mark.parametrize("method", ["crm.lead.list", "crm.item.list"])
def test_short_page_cut_for_both_methods(fake_time: FakeTime, method: str) -> None:
    crm = FakeCrm(with_gaps(3_000))
    rows = list(lister_for(crm, fake_time).iter_list(make_portal(), ListQuery(method)))
    assert ids_of(rows) == crm.ids
    assert crm.requests == 2


def test_rows_outside_the_window_are_refused(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(10))
    crm.replies.append(
        Reply(payload={"result": {"result": {"c0": [{"ID": "5"}, {"ID": "3"}]}, "result_error": []}})
    )
    with pytest.raises(TransientError, match="OUT_OF_WINDOW"):
        list(
            FastLister(make_client(crm.transport, fake_time), transient_retries=0).iter_list(
                make_portal(), ListQuery("crm.lead.list")
            )
        )


@pytest.mark.parametrize(
    "page",
    [{"oops": 1}, "text", [1, 2], [{"TITLE": "no id"}], [{"ID": "x1"}]],
)
def test_malformed_pages_are_transient_errors(fake_time: FakeTime, page: Any) -> None:
    crm = FakeCrm(dense(10))
    crm.replies.append(Reply(payload={"result": {"result": {"c0": page}, "result_error": []}}))
    lister = FastLister(make_client(crm.transport, fake_time), transient_retries=0)
    with pytest.raises(TransientError):
        list(lister.iter_list(make_portal(), ListQuery("crm.lead.list")))


# --- windows, filters and limits ---------------------------------------------------------------------


def test_before_id_bounds_the_chain_and_saves_the_probe(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(10_000))
    rows = list(
        lister_for(crm, fake_time).iter_list(
            make_portal(), ListQuery("crm.lead.list", after_id=100, before_id=2_601)
        )
    )
    assert ids_of(rows) == list(range(101, 2_601))
    assert crm.requests == 1  # 2,500 IDs fit one batch exactly; the bound says nothing is left


def test_chain_length_follows_the_window(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(1_000))
    list(lister_for(crm, fake_time).iter_list(make_portal(), ListQuery("crm.lead.list", before_id=121)))
    assert len(crm.batches[0]) == 3  # IDs 1..120 need at most three pages


def test_id_conditions_in_the_filter_fold_into_the_window(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(500))
    rows = list(
        lister_for(crm, fake_time).iter_list(
            make_portal(), ListQuery("crm.lead.list", filter={">=ID": 101, "<=ID": 200, "STATUS_ID": "NEW"})
        )
    )
    assert ids_of(rows) == list(range(101, 201))
    first = php_parse(crm.batches[0]["c0"].partition("?")[2])
    assert first["filter"] == {"STATUS_ID": "NEW", ">ID": "100", "<ID": "201"}


def test_make_window_keeps_the_tightest_bounds() -> None:
    spec = list_spec("crm.lead.list")
    window = make_window(spec, {">ID": "10", "<ID": 50, "<=id": 40, "TITLE": "x"}, 20, 45)
    assert window == Window(after=20, before=41, base_filter={"TITLE": "x"})
    with pytest.raises(ValueError, match="integers"):
        make_window(spec, {">ID": "abc"}, 0, None)


def test_limit_stops_early_and_sizes_the_chain(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(10_000))
    rows = list(lister_for(crm, fake_time).iter_list(make_portal(), ListQuery("crm.lead.list", limit=120)))
    assert ids_of(rows) == list(range(1, 121))
    assert len(crm.batches[0]) == 3
    assert crm.requests == 1


def _max_id(lister: FastLister, query: ListQuery) -> int | None:
    """The top query the head batch carries, sent on its own (as read_head's `top` command)."""
    spec = query.spec()
    response = lister.client.call(make_portal(), spec.method, max_id_params(spec, query.window(spec)))
    rows = spec.rows_of(response.result)
    return spec.id_of(rows[0]) if rows else None


def test_max_id_is_one_descending_uncounted_call(fake_time: FakeTime) -> None:
    crm = FakeCrm(with_gaps(1_000))
    lister = lister_for(crm, fake_time)
    assert _max_id(lister, ListQuery("crm.lead.list")) == crm.ids[-1]
    assert _max_id(lister, ListQuery("crm.item.list", before_id=100)) == max(i for i in crm.ids if i < 100)
    assert _max_id(lister, ListQuery("crm.lead.list", after_id=10**9)) is None
    assert crm.requests == 3
    assert crm.count_pages == 0


# --- errors inside a chain ---------------------------------------------------------------------------


def _blocked_until(lister: FastLister, crm: FakeCrm, reset_at: float) -> None:
    """A call whose answer says crm.lead.list is blocked until reset_at, as Bitrix24's time block does."""
    crm.replies.append(Reply(payload={"result": [], "time": time_block(0, reset_at)}))
    lister.client.call(make_portal(), "crm.lead.list")


def test_operation_limit_in_a_sub_call_waits_and_resumes(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(6_000))
    # request 1 tells the client when crm.lead.list is unblocked; request 2 is the chain's first batch
    crm.sub_errors[(2, "c10")] = {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}
    lister = lister_for(crm, fake_time)
    _blocked_until(lister, crm, fake_time.now + 5)
    rows = list(lister.iter_list(make_portal(), ListQuery("crm.lead.list")))
    assert ids_of(rows) == dense(6_000)
    assert fake_time.sleeps == [pytest.approx(5.5)]
    # the second batch resumes right after the last good page
    assert php_parse(crm.batches[1]["c0"].partition("?")[2])["filter"] == {">ID": "500"}


def test_operation_limit_without_budget_raises_with_reset_at(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(6_000))
    # request 1 tells the client when crm.lead.list is unblocked; request 2 is the chain's first batch
    crm.sub_errors[(2, "c0")] = {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}
    lister = lister_for(crm, fake_time)
    _blocked_until(lister, crm, fake_time.now + 600)
    with pytest.raises(OperationTimeLimit) as caught:
        list(lister.iter_list(make_portal(), ListQuery("crm.lead.list")))
    assert caught.value.reset_at == fake_time.now + 600


def test_other_sub_call_errors_raise(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(100))
    crm.sub_errors[(1, "c0")] = {"error": "", "error_description": "Access denied."}
    with pytest.raises(Exception, match="Access denied"):
        list(lister_for(crm, fake_time).iter_list(make_portal(), ListQuery("crm.lead.list")))


def test_transient_batch_failures_are_retried_a_few_times(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(100))
    crm.replies.extend(
        [Reply(502, body=b"<html>bad gateway</html>"), Reply(500, {"error": "INTERNAL_SERVER_ERROR"})]
    )
    rows = list(lister_for(crm, fake_time).iter_list(make_portal(), ListQuery("crm.lead.list")))
    assert ids_of(rows) == dense(100)
    assert crm.requests == 3
    assert len(fake_time.sleeps) == 2


def test_transient_retries_are_bounded(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(100))
    crm.replies.extend([Reply(502, body=b"<html></html>")] * 3)
    with pytest.raises(ServerError):
        list(lister_for(crm, fake_time).iter_list(make_portal(), ListQuery("crm.lead.list")))
    assert crm.requests == 3


def test_query_limit_is_not_retried_twice(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(100))
    crm.replies.extend([Reply(503, {"error": "QUERY_LIMIT_EXCEEDED"})] * 5)
    client = make_client(crm.transport, fake_time, max_query_limit_retries=1)
    with pytest.raises(QueryLimitExceeded):
        list(FastLister(client, sleep=fake_time.sleep).iter_list(make_portal(), ListQuery("crm.lead.list")))
    assert crm.requests == 2  # the REST client's own bounded backoff only


# --- parallel windows --------------------------------------------------------------------------------


PARALLEL_CASES = [
    ("crm.lead.list", [], 1),
    ("crm.item.list", [], 1),
    ("crm.lead.list", dense(2_000), 1),  # max ID and all rows in the first request
    ("crm.item.list", dense(2_000), 1),
    ("crm.lead.list", dense(10_000), 5),
    ("crm.item.list", dense(10_000), 5),
    ("crm.lead.list", with_gaps(10_000), 5),
    ("crm.item.list", with_gaps(10_000), 5),
    ("crm.lead.list", dense(100_000), 41),
    ("crm.lead.list", with_gaps(100_000), 42),
    # sparse: windows widen with the measured density
    ("crm.lead.list", with_gaps(20_000, seed=5, ratio=0.9), 10),
    ("crm.item.list", with_gaps(20_000, seed=5, ratio=0.9), 10),
]


@pytest.mark.parametrize(("method", "ids", "max_requests"), PARALLEL_CASES)
def test_parallel_export_matches_sequential_order_and_request_budget(
    fake_time: FakeTime, ids: list[int], max_requests: int, method: str
) -> None:
    crm = FakeCrm(ids)
    rows = list(
        lister_for(crm, fake_time).iter_list_parallel(
            make_portal(), ListQuery(method, select=["TITLE"]), workers=4
        )
    )
    assert ids_of(rows) == ids
    assert crm.count_pages == 0
    assert crm.requests <= max_requests


def test_parallel_first_request_carries_the_max_id_query(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(10_000))
    list(lister_for(crm, fake_time).iter_list_parallel(make_portal(), ListQuery("crm.lead.list")))
    first = crm.batches[0]
    assert len(first) == 50
    assert list(first)[-1] == "top"
    top = php_parse(first["top"].partition("?")[2])
    assert top["order"] == {"ID": "DESC"}
    assert top["start"] == "-1"


def test_parallel_respects_limit_and_filters(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(30_000))
    rows = list(
        lister_for(crm, fake_time).iter_list_parallel(
            make_portal(),
            ListQuery("crm.lead.list", filter={">ID": 1_000, "<ID": 25_001}, limit=7_000),
            workers=2,
        )
    )
    assert ids_of(rows) == list(range(1_001, 8_001))


def test_parallel_propagates_window_failures(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(20_000))
    crm.sub_errors[(3, "c0")] = {"error": "ACCESS_DENIED", "error_description": "nope"}
    with pytest.raises(Exception, match="ACCESS_DENIED"):
        list(
            lister_for(crm, fake_time).iter_list_parallel(
                make_portal(), ListQuery("crm.lead.list"), workers=2
            )
        )


def test_parallel_falls_back_to_sequential_without_a_top(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(3_000))
    crm.sub_errors[(1, "top")] = {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}
    rows = list(lister_for(crm, fake_time).iter_list_parallel(make_portal(), ListQuery("crm.lead.list")))
    assert ids_of(rows) == dense(3_000)
    assert crm.requests == 2
    assert "top" not in crm.batches[1]


# --- parallel reads stop at their limit --------------------------------------------------------------


def _highest_upper_bound(crm: FakeCrm) -> int:
    """The largest `<ID` bound any page of any batch asked for (how far up the ID line the reads went)."""
    bounds = [
        int(php_parse(command.partition("?")[2])["filter"].get("<ID", 0))
        for batch in crm.batches
        for key, command in batch.items()
        if key != "top"
    ]
    return max(bounds)


@pytest.mark.parametrize(
    ("ids", "limit", "max_requests"),
    [
        (dense(100_000), 20_001, 9),  # LeadsFunction's largest page (+1 to know whether more follow)
        (with_gaps(100_000), 20_001, 9),
        (dense(100_000), 5_001, 3),
        (dense(100_000), 2_451, 2),
    ],
)
def test_parallel_reads_only_the_windows_its_limit_needs(
    fake_time: FakeTime, ids: list[int], limit: int, max_requests: int
) -> None:
    # Given far more leads than the limit asks for
    crm = FakeCrm(ids)
    # When a limited parallel read runs (4 workers would keep 8 windows in flight)
    rows = list(
        lister_for(crm, fake_time).iter_list_parallel(
            make_portal(), ListQuery("crm.lead.list", limit=limit), workers=4
        )
    )
    # Then it answers exactly the first `limit` rows in order
    assert ids_of(rows) == ids[:limit]
    # And reads no window past what the limit needs: one request per ~2,450 rows, pages to match
    assert crm.requests <= max_requests
    assert crm.pages <= limit / 50 + 2 * max_requests
    assert _highest_upper_bound(crm) <= ids[limit - 1] + 2_500


def test_parallel_limit_finishes_sequentially_when_the_range_thins_out(fake_time: FakeTime) -> None:
    # Given a dense first batch (density 1 sizes the windows) and then one ID in ten
    ids = dense(3_000) + list(range(3_010, 300_000, 10))
    crm = FakeCrm(ids)
    # When 10,000 rows are asked for: the planned windows hold fewer rows than expected
    rows = list(
        lister_for(crm, fake_time).iter_list_parallel(
            make_portal(), ListQuery("crm.lead.list", limit=10_000), workers=4
        )
    )
    # Then the rest is read after the windows, still in order, and nothing past the limit is answered
    assert ids_of(rows) == ids[:10_000]
    assert crm.count_pages == 0


def test_read_head_is_one_request_with_rows_top_and_density(fake_time: FakeTime) -> None:
    crm = FakeCrm(list(range(2, 20_002, 2)))  # every other ID
    lister = lister_for(crm, fake_time)
    head = lister.read_head(
        make_portal(), ListQuery("crm.lead.list", after_id=100, before_id=15_001, limit=1_000)
    )
    assert ids_of(head.rows) == list(range(102, 2_102, 2))
    assert (head.top, head.last, head.exhausted) == (15_000, 2_100, False)
    assert head.density == pytest.approx(0.5)
    assert crm.requests == 1
    end = lister.read_head(make_portal(), ListQuery("crm.lead.list", after_id=19_900))
    assert (len(end.rows), end.top, end.exhausted) == (50, None, True)


def test_read_head_answers_at_most_its_limit(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(1_000))
    head = lister_for(crm, fake_time).read_head(make_portal(), ListQuery("crm.lead.list", limit=7))
    # A whole page came back; the head keeps 7 rows and continues after the 7th
    assert ids_of(head.rows) == list(range(1, 8))
    assert (head.last, head.exhausted, head.top) == (7, False, 1_000)


# --- planned windows (a page after the first: no head request) ------------------------------------------


def test_read_windows_reads_whole_batches_in_one_round_without_a_head(fake_time: FakeTime) -> None:
    # Given 100,000 leads with one ID in ten missing, and a plan from an earlier read (density 0.9)
    ids = with_gaps(100_000)
    crm = FakeCrm(ids)
    top = ids[-1]
    # When eight windows are read after the 2,450th lead
    page = lister_for(crm, fake_time).read_windows(
        make_portal(), ListQuery("crm.lead.list", after_id=ids[2_449]), top=top, density=0.9, batches=8
    )
    # Then it is eight requests, none of them a head (no `top` query), each about one batch of rows
    assert crm.requests == 8
    assert all("top" not in batch for batch in crm.batches)
    assert ids_of(page.rows) == [i for i in ids if ids[2_449] < i <= page.last]
    assert 8 * 2_400 <= len(page.rows) <= 8 * 2_500
    assert not page.exhausted
    assert page.density == pytest.approx(0.9, abs=0.02)


class RecordingPacer:
    """A pacer that never waits and records what it was told and asked (a PlanningPacer)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def acquire(self, key: str, deadline: float | None) -> None:
        self.calls.append(("acquire", key, 1))

    def expect(self, key: str, requests: int) -> None:
        self.calls.append(("expect", key, requests))


def test_read_windows_announces_its_windows_to_the_pacer_before_the_first_request(
    fake_time: FakeTime,
) -> None:
    # Given a pacer that can reserve announced requests together (the shared DynamoDB bucket)
    crm = FakeCrm(dense(30_000))
    pacer = RecordingPacer()
    lister = FastLister(make_client(crm.transport, fake_time, pacer=pacer), sleep=fake_time.sleep)
    # When a planned read of three windows runs
    lister.read_windows(
        make_portal(pacing_key="member-1"),
        ListQuery("crm.lead.list", after_id=0, before_id=7_501),
        top=30_000,
        density=1.0,
        batches=8,
    )
    # Then the pacer heard of all three before the first acquire, and each request then acquired once
    assert pacer.calls == [("expect", "member-1", 3)] + [("acquire", "member-1", 1)] * 3
    assert crm.requests == 3


def test_a_single_request_is_not_announced(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(3_000))
    pacer = RecordingPacer()
    lister = FastLister(make_client(crm.transport, fake_time, pacer=pacer), sleep=fake_time.sleep)
    lister.read_windows(
        make_portal(),
        ListQuery("crm.lead.list", after_id=0, before_id=2_001),
        top=3_000,
        density=1.0,
        batches=8,
    )
    assert [call[0] for call in pacer.calls] == ["acquire"]


def test_read_windows_stops_at_the_bound_of_a_part(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(30_000))
    page = lister_for(crm, fake_time).read_windows(
        make_portal(),
        ListQuery("crm.lead.list", after_id=1_000, before_id=6_001),
        top=30_000,
        density=1.0,
        batches=8,
    )
    assert ids_of(page.rows) == list(range(1_001, 6_001))
    assert page.exhausted
    assert crm.requests == 2  # 5,000 IDs: two windows of 2,500, not eight


def test_an_open_read_ends_with_one_window_above_the_top_it_was_planned_with(fake_time: FakeTime) -> None:
    # Given a plan made when the highest ID was 5,000, and leads created since (up to 5,100)
    crm = FakeCrm(dense(5_100))
    page = lister_for(crm, fake_time).read_windows(
        make_portal(), ListQuery("crm.lead.list", after_id=2_500), top=5_000, density=1.0, batches=8
    )
    # Then the new leads are read too, by one open window, and the read is complete
    assert ids_of(page.rows) == list(range(2_501, 5_101))
    assert page.exhausted
    assert crm.requests == 2


def test_read_windows_answers_at_most_its_limit(fake_time: FakeTime) -> None:
    crm = FakeCrm(dense(30_000))
    page = lister_for(crm, fake_time).read_windows(
        make_portal(), ListQuery("crm.lead.list", limit=6_000), top=30_000, density=1.0, batches=4
    )
    assert ids_of(page.rows) == list(range(1, 6_001))
    assert (page.last, page.exhausted) == (6_000, False)
