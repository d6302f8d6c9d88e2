"""RestClient: request shape, endpoint checks, 503 backoff, 429 waits, 302 renames, expired_token, batch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from b24connector.bitrix24.errors import (
    AuthServerUnavailable,
    DeadlineExceeded,
    ExpiredToken,
    InvalidToken,
    OperationTimeLimit,
    PortalMoved,
    QueryLimitExceeded,
    ServerError,
    TransientError,
    UnknownAuthError,
    UnsafeEndpoint,
)
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.rest import RestClient, encode_commands
from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES, load_settings
from tests.bitrix24.fakes import (
    ACCESS_TOKEN,
    ENDPOINT,
    FRESH_TOKEN,
    FakeTime,
    FakeTransport,
    Reply,
    make_client,
    make_portal,
    session_with,
    time_block,
)
from tests.support.pacing import NoPacing

OK = Reply(payload={"result": [{"ID": "1"}], "next": 50, "total": 120, "time": time_block(1.0)})
QUERY_LIMIT = Reply(503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
EXPIRED = Reply(401, {"error": "expired_token", "error_description": "The access token provided has expired"})


def limit_reply(reset_at: float | None = None) -> Reply:
    payload: dict[str, Any] = {
        "error": "OPERATION_TIME_LIMIT",
        "error_description": "Method is blocked due to operation time limit.",
    }
    if reset_at is not None:
        payload["time"] = {"operating_reset_at": reset_at, "operating": 481.2}
    return Reply(429, payload)


# --- request shape -------------------------------------------------------------------------------


def test_call_posts_json_with_auth_in_the_body(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(OK)
    response = make_client(transport, fake_time).call(
        make_portal(), "crm.lead.list", {"select": ["ID"], "start": -1}
    )
    [sent] = transport.sent
    assert sent.method == "POST"
    assert sent.url == f"{ENDPOINT}crm.lead.list"
    assert sent.json() == {"select": ["ID"], "start": -1, "auth": ACCESS_TOKEN}
    assert ACCESS_TOKEN not in sent.url
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.timeout == (3.05, 30.0)
    assert response.result == [{"ID": "1"}]
    assert (response.next, response.total) == (50, 120)
    assert response.time["duration"] == 0.01


@pytest.mark.parametrize(
    "method", ["", "crm.lead.list/../x", "crm.lead.list?auth=x", "../batch", "a b", "crm..x"]
)
def test_bad_method_names_send_nothing(fake_time: FakeTime, method: str) -> None:
    transport = FakeTransport()
    with pytest.raises(ValueError, match="method"):
        make_client(transport, fake_time).call(make_portal(), method)
    assert transport.sent == []


def test_auth_in_params_is_refused(fake_time: FakeTime) -> None:
    with pytest.raises(ValueError, match="access token"):
        make_client(FakeTransport(), fake_time).call(make_portal(), "app.info", {"auth": "x"})


@pytest.mark.parametrize(
    ("endpoint", "domain"),
    [
        ("http://acme.bitrix24.com/rest/", None),
        ("https://evil.com/rest/", None),
        ("https://acme.bitrix24.com/rest/x/", None),
        ("https://acme.bitrix24.com@evil.com/rest/", None),
        ("https://127.0.0.1/rest/", None),
        ("https://other.bitrix24.com/rest/", "acme.bitrix24.com"),
        ("", None),
    ],
)
def test_unsafe_client_endpoints_send_nothing(fake_time: FakeTime, endpoint: str, domain: str | None) -> None:
    transport = FakeTransport()
    with pytest.raises(UnsafeEndpoint):
        make_client(transport, fake_time).call(
            make_portal(client_endpoint=endpoint, domain=domain), "app.info"
        )
    assert transport.sent == []


def test_local_mode_reaches_a_loopback_portal_over_http(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(OK)
    client = RestClient(
        PortalPolicy(DEFAULT_PORTAL_SUFFIXES, ("127.0.0.1:18080",), local_mode=True),
        session=session_with(transport),
        pacer=NoPacing(),
    )
    client.call(PortalContext("http://127.0.0.1:18080/rest/", ACCESS_TOKEN), "app.info")
    assert transport.sent[0].url == "http://127.0.0.1:18080/rest/app.info"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (requests.ReadTimeout(f"https://acme.bitrix24.com/rest/x?auth={ACCESS_TOKEN}"), "TIMEOUT"),
        (requests.ConnectionError(f"auth={ACCESS_TOKEN}"), "CONNECTION_ERROR"),
        (requests.exceptions.ChunkedEncodingError("broken"), "CONNECTION_ERROR"),
    ],
)
def test_transport_failures_are_transient_and_never_chained(
    fake_time: FakeTime, exc: Exception, code: str
) -> None:
    transport = FakeTransport().queue(Reply(raises=exc))
    with pytest.raises(TransientError) as caught:
        make_client(transport, fake_time).call(make_portal(), "app.info")
    assert caught.value.code == code
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert ACCESS_TOKEN not in str(caught.value)
    assert len(transport.sent) == 1  # not retried here


def test_server_echoing_the_token_is_redacted(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(
        Reply(400, {"error": "ERROR_CORE", "error_description": f"bad auth {ACCESS_TOKEN}"})
    )
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the class is not the point here
        make_client(transport, fake_time).call(make_portal(), "app.info")
    assert ACCESS_TOKEN not in str(caught.value)
    assert ACCESS_TOKEN not in repr(caught.value)


def test_reprs_hide_tokens(fake_time: FakeTime) -> None:
    portal = make_portal(renew=lambda _t: FRESH_TOKEN)
    client = make_client(FakeTransport(), fake_time)
    assert ACCESS_TOKEN not in repr(portal)
    assert "acme.bitrix24.com" in repr(portal)
    assert ACCESS_TOKEN not in repr(client)


def test_html_answers_become_typed_errors(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(Reply(502, body=b"<html><h1>502 Bad Gateway</h1></html>"))
    with pytest.raises(ServerError) as caught:
        make_client(transport, fake_time).call(make_portal(), "crm.lead.list")
    assert caught.value.http_status == 502


# --- 503 QUERY_LIMIT_EXCEEDED: bounded exponential backoff with full jitter -------------------------


def test_query_limit_backs_off_exponentially_then_raises(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(*[QUERY_LIMIT] * 10)
    client = make_client(
        transport, fake_time, rand=lambda: 1.0, max_query_limit_retries=4, backoff_base=0.5, backoff_cap=8
    )
    with pytest.raises(QueryLimitExceeded):
        client.call(make_portal(), "crm.lead.list")
    assert len(transport.sent) == 5  # first try + 4 retries, then give up
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 4.0]


def test_query_limit_delays_are_capped_and_jittered(fake_time: FakeTime) -> None:
    draws = iter([0.9, 0.1, 0.5, 0.0, 1.0, 0.3])
    transport = FakeTransport().queue(*[QUERY_LIMIT] * 7)
    client = make_client(
        transport,
        fake_time,
        rand=lambda: next(draws),
        max_query_limit_retries=6,
        backoff_base=1,
        backoff_cap=3,
    )
    with pytest.raises(QueryLimitExceeded):
        client.call(make_portal(), "crm.lead.list")
    # Full jitter: uniform(0, min(cap, base * 2**attempt)).
    assert fake_time.sleeps == pytest.approx([0.9, 0.2, 1.5, 0.0, 3.0, 0.9])


def test_query_limit_recovers(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(QUERY_LIMIT, QUERY_LIMIT, OK)
    response = make_client(transport, fake_time, rand=lambda: 0.5).call(make_portal(), "crm.lead.list")
    assert response.result == [{"ID": "1"}]
    assert fake_time.sleeps == [0.25, 0.5]


def test_query_limit_backoff_respects_the_deadline(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(*[QUERY_LIMIT] * 5)
    portal = make_portal(deadline=fake_time.mono + 1.2)
    with pytest.raises(QueryLimitExceeded):
        make_client(transport, fake_time, rand=lambda: 1.0).call(portal, "crm.lead.list")
    assert fake_time.sleeps == [0.5]  # the next 1.0 s delay would pass the deadline
    assert fake_time.mono <= portal.deadline  # type: ignore[operator]


# --- 401 CONNECTION_ERROR: the portal's own token check failed; transient (docs/bitrix24-errors.md) ----

AUTH_CHECK_FAILED = Reply(
    401, {"error": "CONNECTION_ERROR", "error_description": "Error connecting to authorization server"}
)


def test_connection_error_is_retried_with_jitter_then_raised_as_transient(fake_time: FakeTime) -> None:
    renewals: list[str] = []
    reloads: list[str] = []
    transport = FakeTransport().queue(*[AUTH_CHECK_FAILED] * 5)
    portal = make_portal(renew=_recording(renewals, FRESH_TOKEN), reload=_recording(reloads, None))
    client = make_client(transport, fake_time, rand=lambda: 0.5, backoff_base=0.5)
    with pytest.raises(AuthServerUnavailable) as caught:
        client.call(portal, "crm.lead.list")
    assert caught.value.retryable
    assert len(transport.sent) == 3  # first try + 2 retries
    assert fake_time.sleeps == [0.25, 0.5]  # full jitter: uniform(0, base * 2**attempt)
    # The grant is not suspected: no renewal, no reload of the stored token
    assert renewals == []
    assert reloads == []


def test_connection_error_recovers_on_a_retry(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(AUTH_CHECK_FAILED, OK)
    response = make_client(transport, fake_time, rand=lambda: 1.0).call(make_portal(), "crm.lead.list")
    assert response.result == [{"ID": "1"}]
    assert [sent.json()["auth"] for sent in transport.sent] == [ACCESS_TOKEN, ACCESS_TOKEN]


def test_connection_error_retries_stay_inside_the_deadline(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(*[AUTH_CHECK_FAILED] * 5)
    portal = make_portal(deadline=fake_time.mono + 0.7)
    with pytest.raises(AuthServerUnavailable):
        make_client(transport, fake_time, rand=lambda: 1.0).call(portal, "crm.lead.list")
    assert fake_time.sleeps == [0.5]  # the next 1.0 s delay would pass the deadline
    assert len(transport.sent) == 2


def test_an_unknown_401_adopts_a_newer_stored_token_but_never_renews(fake_time: FakeTime) -> None:
    renewals: list[str] = []
    reloads: list[str] = []
    unknown = Reply(401, {"error": "SOMETHING_NEW", "error_description": "?"})
    transport = FakeTransport().queue(unknown, unknown)
    portal = make_portal(renew=_recording(renewals, FRESH_TOKEN), reload=_recording(reloads, FRESH_TOKEN))
    with pytest.raises(UnknownAuthError):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert reloads == [ACCESS_TOKEN]
    assert renewals == []
    assert [sent.json()["auth"] for sent in transport.sent] == [ACCESS_TOKEN, FRESH_TOKEN]


# --- 429 OPERATION_TIME_LIMIT: wait for operating_reset_at if it fits the budget ------------------------


def test_operation_limit_waits_for_the_reset_in_the_error_body(fake_time: FakeTime) -> None:
    reset_at = fake_time.now + 20
    transport = FakeTransport().queue(limit_reply(reset_at), OK)
    response = make_client(transport, fake_time).call(make_portal(), "crm.lead.list")
    assert response.result == [{"ID": "1"}]
    assert fake_time.sleeps == [pytest.approx(20.5)]
    assert len(transport.sent) == 2


def test_operation_limit_uses_the_last_successful_reset_of_that_method(fake_time: FakeTime) -> None:
    reset_at = fake_time.now + 30
    ok_with_reset = Reply(payload={"result": [], "time": time_block(1.0, reset_at)})
    other_method = Reply(payload={"result": [], "time": time_block(1.0, fake_time.now + 500)})
    transport = FakeTransport().queue(ok_with_reset, other_method, limit_reply(None), OK)
    client = make_client(transport, fake_time)
    portal = make_portal()
    client.call(portal, "crm.lead.list")
    client.call(portal, "crm.deal.list")
    client.call(portal, "crm.lead.list")
    assert fake_time.sleeps == [pytest.approx(30.5)]


def test_operation_limit_beyond_the_budget_raises_with_reset_at(fake_time: FakeTime) -> None:
    reset_at = fake_time.now + 120
    transport = FakeTransport().queue(limit_reply(reset_at), OK)
    portal = make_portal(deadline=fake_time.mono + 60)
    with pytest.raises(OperationTimeLimit) as caught:
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert caught.value.reset_at == reset_at
    assert fake_time.sleeps == []
    assert len(transport.sent) == 1


def test_operation_limit_beyond_the_max_wait_raises(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(limit_reply(fake_time.now + 300))
    with pytest.raises(OperationTimeLimit):
        make_client(transport, fake_time, max_limit_wait=60).call(make_portal(), "crm.lead.list")
    assert fake_time.sleeps == []


def test_operation_limit_waits_only_once(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(limit_reply(fake_time.now + 5), limit_reply(fake_time.now + 50))
    with pytest.raises(OperationTimeLimit) as caught:
        make_client(transport, fake_time).call(make_portal(), "crm.lead.list")
    assert len(fake_time.sleeps) == 1
    assert caught.value.reset_at is not None


def test_operation_limit_without_any_reset_raises_at_once(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(limit_reply(None))
    with pytest.raises(OperationTimeLimit) as caught:
        make_client(transport, fake_time).call(make_portal(), "crm.lead.list")
    assert caught.value.reset_at is None
    assert fake_time.sleeps == []


def test_html_429_on_batch_uses_the_sub_methods_known_reset(fake_time: FakeTime) -> None:
    reset_at = fake_time.now + 10
    batch_ok = Reply(
        payload={
            "result": {
                "result": {"c0": []},
                "result_error": [],
                "result_total": [],
                "result_next": [],
                "result_time": {"c0": time_block(1.0, reset_at)},
            },
            "time": time_block(1.0),
        }
    )
    transport = FakeTransport().queue(batch_ok, Reply(429, body=b"<html>blocked</html>"), batch_ok)
    client = make_client(transport, fake_time)
    portal = make_portal()
    client.batch(portal, {"c0": ("crm.lead.list", {"start": -1})})
    client.batch(portal, {"c0": ("crm.lead.list", {"start": -1})})
    assert fake_time.sleeps == [pytest.approx(10.5)]


# --- 302 portal rename -------------------------------------------------------------------------------


def test_rename_re_posts_the_same_body_and_reports_the_new_domain(fake_time: FakeTime) -> None:
    moved: list[tuple[str, str]] = []
    transport = FakeTransport().queue(
        Reply(302, body=b"", headers={"Location": "https://new-name.bitrix24.com/rest/crm.lead.list"}), OK
    )
    portal = make_portal(
        on_moved=lambda host, endpoint: moved.append((host, endpoint)), domain="acme.bitrix24.com"
    )
    make_client(transport, fake_time).call(portal, "crm.lead.list", {"filter": {">ID": 5}})
    first, second = transport.sent
    assert second.method == "POST"
    assert second.url == "https://new-name.bitrix24.com/rest/crm.lead.list"
    assert second.body == first.body
    assert moved == [("new-name.bitrix24.com", "https://new-name.bitrix24.com/rest/")]
    assert portal.moved_to == "new-name.bitrix24.com"
    assert portal.client_endpoint == "https://new-name.bitrix24.com/rest/"


def test_a_rename_the_owner_refuses_switches_nothing(fake_time: FakeTime) -> None:
    # Given an owner that will not accept the new address
    def refuse(host: str, endpoint: str) -> None:
        raise PortalMoved("PORTAL_MOVED", "taken", http_status=302)

    transport = FakeTransport().queue(
        Reply(302, body=b"", headers={"Location": "https://new-name.bitrix24.com/rest/crm.lead.list"}), OK
    )
    portal = make_portal(on_moved=refuse, domain="acme.bitrix24.com")
    # When the portal answers with a rename
    with pytest.raises(PortalMoved):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    # Then the request is not re-sent and the context still names the old portal
    assert len(transport.sent) == 1
    assert (portal.client_endpoint, portal.domain, portal.moved_to) == (ENDPOINT, "acme.bitrix24.com", None)


def test_parallel_requests_report_a_rename_once() -> None:
    entered, release = threading.Event(), threading.Event()
    reported: list[str] = []

    def on_moved(host: str, endpoint: str) -> None:
        reported.append(endpoint)
        entered.set()
        assert release.wait(10)

    portal = make_portal(on_moved=on_moved, domain="acme.bitrix24.com")
    new = "https://new-name.bitrix24.com/rest/"
    first = threading.Thread(target=portal.move_to, args=(new,))
    first.start()
    assert entered.wait(10)
    # A second request's 302 arrives while the first is still reporting it
    second = threading.Thread(target=portal.move_to, args=(new,))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert reported == [new]
    assert (portal.client_endpoint, portal.domain) == (new, "new-name.bitrix24.com")
    # and a late 302 for the same rename changes nothing either
    portal.move_to(new)
    assert reported == [new]


def test_relative_rename_location_is_resolved(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(Reply(301, body=b"", headers={"Location": "/rest/crm.lead.list"}), OK)
    make_client(transport, fake_time).call(make_portal(), "crm.lead.list")
    assert transport.sent[1].url == f"{ENDPOINT}crm.lead.list"


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.com/rest/crm.lead.list",
        "http://new-name.bitrix24.com/rest/crm.lead.list",
        "https://acme.bitrix24.com/login/",  # same host, not a rename: refused without a re-send loop
        "https://new-name.bitrix24.com@evil.com/rest/x",
        "https://evil.com\\@new-name.bitrix24.com/",
        "https://[::1/rest/x",
        "https://127.0.0.1/rest/x",
        "",
    ],
)
def test_renames_to_disallowed_places_are_not_followed(fake_time: FakeTime, location: str) -> None:
    transport = FakeTransport().queue(
        Reply(302, body=b"", headers={"Location": location} if location else {})
    )
    portal = make_portal()
    with pytest.raises(PortalMoved):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert len(transport.sent) == 1
    assert portal.client_endpoint == ENDPOINT


@pytest.mark.parametrize(
    "location",
    [
        "https://new-name.bitrix24.com",
        "https://new-name.bitrix24.com/",
        "https://new-name.bitrix24.com/login/?back=/rest/crm.lead.list",
        "https://new-name.bitrix24.com/marketplace/app/1/",
        "https://NEW-NAME.bitrix24.com/rest/other.method?x=1#frag",
    ],
)
def test_a_rename_takes_only_scheme_and_host_from_the_location(fake_time: FakeTime, location: str) -> None:
    # Given a renamed portal whose 302 names any page on the new host (the SDKs use scheme and host only)
    moved: list[tuple[str, str]] = []
    transport = FakeTransport().queue(Reply(302, body=b"", headers={"Location": location}), OK)
    portal = make_portal(
        on_moved=lambda host, endpoint: moved.append((host, endpoint)), domain="acme.bitrix24.com"
    )
    # When a call meets it
    make_client(transport, fake_time).call(portal, "crm.lead.list", {"filter": {">ID": 5}})
    # Then the same request goes to our own REST path on the new host, and the move is reported
    first, second = transport.sent
    assert second.url == "https://new-name.bitrix24.com/rest/crm.lead.list"
    assert second.body == first.body
    assert moved == [("new-name.bitrix24.com", "https://new-name.bitrix24.com/rest/")]


def test_rename_loops_stop(fake_time: FakeTime) -> None:
    hop = Reply(302, body=b"", headers={"Location": "https://b.bitrix24.com/rest/m"})
    back = Reply(302, body=b"", headers={"Location": "https://acme.bitrix24.com/rest/m"})
    transport = FakeTransport().queue(hop, back, hop, OK)
    with pytest.raises(PortalMoved):
        make_client(transport, fake_time, max_redirects=2).call(make_portal(), "app.info")
    assert len(transport.sent) == 3


# --- 401 expired_token: renew once, retry once ---------------------------------------------------------


def test_expired_token_renews_once_and_retries(fake_time: FakeTime) -> None:
    rejected: list[str] = []

    def renew(token: str) -> str:
        rejected.append(token)
        return FRESH_TOKEN

    transport = FakeTransport().queue(EXPIRED, OK)
    portal = make_portal(renew=renew)
    response = make_client(transport, fake_time).call(portal, "crm.lead.list", {"start": -1})
    assert response.result == [{"ID": "1"}]
    assert rejected == [ACCESS_TOKEN]
    assert [s.json()["auth"] for s in transport.sent] == [ACCESS_TOKEN, FRESH_TOKEN]
    assert portal.access_token == FRESH_TOKEN


def test_a_second_expired_token_raises(fake_time: FakeTime) -> None:
    calls: list[str] = []
    transport = FakeTransport().queue(EXPIRED, EXPIRED, OK)
    portal = make_portal(renew=lambda t: calls.append(t) or FRESH_TOKEN)  # type: ignore[func-returns-value]
    with pytest.raises(ExpiredToken):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert len(calls) == 1
    assert len(transport.sent) == 2


def test_expired_token_without_renewal_raises(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(EXPIRED)
    with pytest.raises(ExpiredToken):
        make_client(transport, fake_time).call(make_portal(), "crm.lead.list")


def test_concurrent_renewals_coalesce() -> None:
    calls: list[str] = []
    gate = threading.Event()

    def renew(token: str) -> str:
        calls.append(token)
        gate.wait(1)
        return FRESH_TOKEN

    portal = make_portal(renew=renew)
    threads = [threading.Thread(target=portal.renew_token, args=(ACCESS_TOKEN,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [ACCESS_TOKEN]
    assert portal.access_token == FRESH_TOKEN


# --- budget, timeouts and pacing -----------------------------------------------------------------------


def test_no_request_after_the_deadline(fake_time: FakeTime) -> None:
    transport = FakeTransport()
    with pytest.raises(DeadlineExceeded):
        make_client(transport, fake_time).call(make_portal(deadline=fake_time.mono - 1), "app.info")
    assert transport.sent == []


def test_timeouts_shrink_to_the_remaining_budget(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(OK)
    make_client(transport, fake_time).call(make_portal(deadline=fake_time.mono + 2.0), "app.info")
    assert transport.sent[0].timeout == (2.0, 2.0)


def test_the_pacer_is_asked_before_every_request(fake_time: FakeTime) -> None:
    asked: list[tuple[str, float | None]] = []

    class Recorder:
        def acquire(self, key: str, deadline: float | None) -> None:
            asked.append((key, deadline))

    transport = FakeTransport().queue(QUERY_LIMIT, OK)
    portal = make_portal(deadline=fake_time.mono + 100)
    make_client(transport, fake_time, pacer=Recorder()).call(portal, "app.info")
    assert asked == [("acme.bitrix24.com", portal.deadline)] * 2


def test_client_from_settings() -> None:
    env = {
        "BITRIX24_CLIENT_ID": "local.x.y",
        "CLIENT_SECRET_ID": "s",
        "CURSOR_SECRET_ID": "c",
        "PORTALS_TABLE": "p",
        "STATES_TABLE": "s",
        "RATE_LIMIT_TABLE": "r",
        "TOKEN_KEY_ID": "k",
        "REFRESH_QUEUE_URL": "q",
        "RESCUE_QUEUE_URL": "r",
        "LIFECYCLE_QUEUE_URL": "l",
        "HTTP_TIMEOUT_SECONDS": "12",
        "RATE_LIMIT_PER_SECOND": "5",
        "RATE_LIMIT_BURST": "250",
    }
    client = RestClient.from_settings(load_settings(env))
    assert "rate=5.0, burst=250" in repr(client)
    assert "(3.05, 12.0)" in repr(client)


# --- batch ---------------------------------------------------------------------------------------------


def test_batch_encodes_sub_commands_php_style(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(
        Reply(
            payload={
                "result": {
                    "result": {"leads": [{"ID": "7"}], "me": {"ID": "1"}},
                    "result_error": [],
                    "result_total": {"leads": 1},
                    "result_next": [],
                    "result_time": [],
                },
                "time": time_block(1.0),
            }
        )
    )
    result = make_client(transport, fake_time).batch(
        make_portal(),
        {
            "leads": (
                "crm.lead.list",
                {"filter": {">ID": 5, "%TITLE": "a&b"}, "select": ["ID", "TITLE"], "start": -1},
            ),
            "me": "user.current",
        },
        halt=True,
    )
    [sent] = transport.sent
    assert sent.url == f"{ENDPOINT}batch"
    body = sent.json()
    assert body["halt"] == 1
    assert body["auth"] == ACCESS_TOKEN
    assert body["cmd"] == {
        "leads": "crm.lead.list?filter[%3EID]=5&filter[%25TITLE]=a%26b&select[0]=ID&select[1]=TITLE&start=-1",
        "me": "user.current",
    }
    assert result.results["leads"] == [{"ID": "7"}]
    assert result.totals == {"leads": 1}


def test_batch_limits_are_checked_before_sending(fake_time: FakeTime) -> None:
    transport = FakeTransport()
    client = make_client(transport, fake_time)
    with pytest.raises(ValueError, match="at most 50"):
        client.batch(make_portal(), {f"c{i}": ("crm.lead.list", {}) for i in range(51)})
    with pytest.raises(ValueError, match="at least one"):
        client.batch(make_portal(), {})
    with pytest.raises(ValueError, match="command ids"):
        client.batch(make_portal(), {"a]": ("crm.lead.list", {})})
    with pytest.raises(ValueError, match="method"):
        client.batch(make_portal(), {"a": ("crm.lead.list/x", {})})
    assert transport.sent == []


def test_fifty_commands_are_fine() -> None:
    cmd, methods = encode_commands({f"c{i}": ("crm.lead.list", {"start": -1}) for i in range(50)})
    assert len(cmd) == 50
    assert set(methods.values()) == {"crm.lead.list"}
    assert "halt" not in cmd


def test_batch_halt_defaults_to_zero(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(Reply(payload={"result": {"result": [], "result_error": []}}))
    make_client(transport, fake_time).batch(make_portal(), {"a": "app.info"})
    assert transport.sent[0].json()["halt"] == 0


def test_batch_as_a_whole_can_expire_and_renew(fake_time: FakeTime) -> None:
    ok = Reply(payload={"result": {"result": {"a": True}, "result_error": []}})
    transport = FakeTransport().queue(EXPIRED, ok)
    portal = make_portal(renew=lambda _t: FRESH_TOKEN)
    assert make_client(transport, fake_time).batch(portal, {"a": "app.info"}).results == {"a": True}
    assert transport.sent[1].json()["auth"] == FRESH_TOKEN


def test_real_clock_defaults_are_usable() -> None:
    transport = FakeTransport().queue(OK)
    client = RestClient(PortalPolicy(DEFAULT_PORTAL_SUFFIXES), session=session_with(transport))
    assert client.call(make_portal(), "crm.lead.list").total == 120


def test_a_token_renewed_by_another_thread_meanwhile_is_used_without_renewing(fake_time: FakeTime) -> None:
    # Given a request in flight with the old token while another thread renews the portal's token
    calls: list[str] = []
    portal = make_portal(renew=lambda t: calls.append(t) or FRESH_TOKEN)  # type: ignore[func-returns-value]

    def answer_after_renewal(_sent: Any) -> Reply:
        portal.renew_token(ACCESS_TOKEN)  # the other thread's renewal lands first
        return Reply(
            401, {"error": "invalid_token", "error_description": "Unable to get application by token"}
        )

    replies = iter([answer_after_renewal, lambda _s: OK])

    def handler(sent: Any) -> Reply:
        return next(replies)(sent)

    transport = FakeTransport(handler)
    response = make_client(transport, fake_time).call(portal, "crm.lead.list")
    # Then the stale rejection is retried once with the new token and nothing renews twice
    assert response.result == [{"ID": "1"}]
    assert calls == [ACCESS_TOKEN]
    assert [s.json()["auth"] for s in transport.sent] == [ACCESS_TOKEN, FRESH_TOKEN]


def test_invalid_token_with_the_current_token_is_not_retried(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(Reply(401, {"error": "invalid_token"}), OK)
    with pytest.raises(InvalidToken):
        make_client(transport, fake_time).call(make_portal(renew=lambda _t: FRESH_TOKEN), "crm.lead.list")
    assert len(transport.sent) == 1


# --- 401 invalid_token: adopt a newer stored token once, never renew ----------------------------------

REVOKED = Reply(401, {"error": "invalid_token", "error_description": "Unable to get application by token"})


def _recording(calls: list[str], answer: str | None) -> Callable[[str], str | None]:
    def hook(token: str) -> str | None:
        calls.append(token)
        return answer

    return hook


def test_invalid_token_adopts_a_newer_stored_token_and_retries_once(fake_time: FakeTime) -> None:
    # Given another container's refresh revoked our cached token and stored a newer pair
    reloads: list[str] = []
    renewals: list[str] = []
    portal = make_portal(renew=_recording(renewals, FRESH_TOKEN), reload=_recording(reloads, FRESH_TOKEN))
    transport = FakeTransport().queue(REVOKED, OK)
    # When a call is rejected with invalid_token
    response = make_client(transport, fake_time).call(portal, "crm.lead.list")
    # Then the stored token is adopted (no refresh) and the call retried once with it
    assert response.result == [{"ID": "1"}]
    assert reloads == [ACCESS_TOKEN]
    assert renewals == []
    assert [s.json()["auth"] for s in transport.sent] == [ACCESS_TOKEN, FRESH_TOKEN]
    assert portal.access_token == FRESH_TOKEN


def test_invalid_token_with_nothing_newer_stored_raises_without_renewing(fake_time: FakeTime) -> None:
    reloads: list[str] = []
    renewals: list[str] = []
    portal = make_portal(renew=_recording(renewals, FRESH_TOKEN), reload=_recording(reloads, None))
    transport = FakeTransport().queue(REVOKED, OK)
    with pytest.raises(InvalidToken):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert reloads == [ACCESS_TOKEN]
    assert renewals == []
    assert len(transport.sent) == 1
    assert portal.access_token == ACCESS_TOKEN


def test_a_reload_answering_the_rejected_token_counts_as_nothing_newer(fake_time: FakeTime) -> None:
    portal = make_portal(reload=lambda token: token)
    transport = FakeTransport().queue(REVOKED, OK)
    with pytest.raises(InvalidToken):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert len(transport.sent) == 1


def test_a_second_invalid_token_after_a_reload_raises(fake_time: FakeTime) -> None:
    reloads: list[str] = []
    renewals: list[str] = []
    portal = make_portal(renew=_recording(renewals, FRESH_TOKEN), reload=_recording(reloads, FRESH_TOKEN))
    transport = FakeTransport().queue(REVOKED, REVOKED, OK)
    with pytest.raises(InvalidToken):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert reloads == [ACCESS_TOKEN]
    assert renewals == []
    assert [s.json()["auth"] for s in transport.sent] == [ACCESS_TOKEN, FRESH_TOKEN]


def test_an_expired_token_after_a_reload_is_not_renewed_again(fake_time: FakeTime) -> None:
    # One token retry per call, whichever hook served it
    renewals: list[str] = []
    portal = make_portal(renew=_recording(renewals, "third-token"), reload=lambda _t: FRESH_TOKEN)
    transport = FakeTransport().queue(REVOKED, EXPIRED, OK)
    with pytest.raises(ExpiredToken):
        make_client(transport, fake_time).call(portal, "crm.lead.list")
    assert renewals == []
    assert len(transport.sent) == 2


def test_concurrent_reloads_coalesce() -> None:
    reloads: list[str] = []
    gate = threading.Event()

    def reload(token: str) -> str | None:
        reloads.append(token)
        gate.wait(1)
        return FRESH_TOKEN

    portal = make_portal(reload=reload)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(portal.reload_token(ACCESS_TOKEN))) for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert reloads == [ACCESS_TOKEN]
    assert results == [True] * 5
    assert portal.access_token == FRESH_TOKEN
