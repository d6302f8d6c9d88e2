"""Leaky bucket 503, operating limit 429, scripted faults, portal rename 302 (fact sheet sections 4.1, 4.3, 6)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests

from bitrix24_emulator import Emulator
from tests.infra.emulator.helpers import admin, call, token_request


def test_leaky_bucket_answers_503_when_full_and_drains(emu_factory: Callable[..., Emulator]) -> None:
    # Given a portal with a small bucket (burst 5, drain 2/s)
    emulator = emu_factory(rate_burst=5, rate_drain_per_second=2.0)
    token = emulator.issue_tokens()["access_token"]
    emulator.clock.freeze()  # only advance() drains the bucket: no timing flakiness

    # When 6 requests arrive at once
    answers = [call(emulator, "app.info", token) for _ in range(6)]

    # Then the 6th is refused with 503 QUERY_LIMIT_EXCEEDED
    assert [a.status_code for a in answers[:5]] == [200] * 5
    assert answers[5].status_code == 503
    assert answers[5].json()["error"] == "QUERY_LIMIT_EXCEEDED"
    assert answers[5].json()["error_description"] == "Too many requests"
    # And one second later two requests have drained out
    emulator.clock.advance(1.0)
    assert [call(emulator, "app.info", token).status_code for _ in range(3)] == [200, 200, 503]
    stats = emulator.stats()
    assert stats["http_503"] == 2
    assert stats["requests"] == 9


def test_default_plan_is_2_per_second_burst_50_and_enterprise_is_configurable(
    emu: Emulator, token: str
) -> None:
    emu.clock.freeze()
    statuses = [call(emu, "app.info", token).status_code for _ in range(51)]
    assert statuses.count(200) == 50
    assert statuses[-1] == 503
    emu.configure(rate_plan="enterprise")
    emu.reset()
    assert all(call(emu, "app.info", token).status_code == 200 for _ in range(60))
    emu.configure(rate_plan="off")
    assert all(call(emu, "app.info", token).status_code == 200 for _ in range(260 - 60))


def test_operating_limit_blocks_only_that_method_until_reset(emu: Emulator, token: str) -> None:
    # Given crm.lead.list has used more than its 420 s in the current window
    charged = emu.add_operating("crm.lead.list", 480.0)
    assert charged["operating"] == pytest.approx(480.0)
    reset_at = charged["operating_reset_at"]

    # When it is called
    blocked = call(emu, "crm.lead.list", token, start=-1)

    # Then 429 OPERATION_TIME_LIMIT with no `time` block (no operating_reset_at in an error answer)
    assert blocked.status_code == 429
    assert blocked.json() == {
        "error": "OPERATION_TIME_LIMIT",
        "error_description": "Method is blocked due to operation time limit.",
    }
    # while other methods still work and report their own counters in `time`
    other = call(emu, "app.info", token)
    assert other.status_code == 200
    assert "operating_reset_at" in other.json()["time"]
    # And once the charged minute leaves the window the method works again
    assert emu.clock.now() < reset_at <= emu.clock.now() + 600
    emu.clock.advance(reset_at - emu.clock.now() + 1)
    assert call(emu, "crm.lead.list", token, start=-1).status_code == 200


def test_default_operating_limit_is_420_seconds(emu: Emulator, token: str) -> None:
    emu.add_operating("crm.lead.list", 419.0)
    assert call(emu, "crm.lead.list", token, start=-1).status_code == 200
    emu.add_operating("crm.lead.list", 1.0)
    assert call(emu, "crm.lead.list", token, start=-1).status_code == 429


def test_counted_pages_exhaust_the_operating_budget(emu_factory: Callable[..., Emulator]) -> None:
    # Given a limit of 0.5 s and pages costing 0.005 + 300 * 0.5 ms = 0.155 s each with COUNT
    emulator = emu_factory(operating_limit_seconds=0.5, count_cost_per_row=0.0005)
    token = emulator.issue_tokens()["access_token"]
    statuses = [call(emulator, "crm.lead.list", token, start=0).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    assert emulator.stats()["http_429"] == 1


def test_calls_under_a_tenth_of_a_second_are_not_counted(emu: Emulator, token: str) -> None:
    # Given calls of 0.005 s (start=-1, no COUNT) and of 0.011 s (COUNT over 300 rows)
    for _ in range(20):
        assert call(emu, "crm.lead.list", token, start=-1).status_code == 200
        assert call(emu, "crm.lead.list", token, start=0).status_code == 200

    # Then none of them is charged to the operating window
    last = call(emu, "crm.lead.list", token, start=0).json()
    assert last["time"]["operating"] == 0
    assert admin(emu, "GET", "/operating").json()["operating"] == {}


def test_batch_is_exempt_and_a_blocked_method_fails_inside_result_error(emu: Emulator, token: str) -> None:
    emu.add_operating("crm.lead.list", 500.0)
    cmd = {"a": "app.info", "b": "crm.lead.list?start=-1"}

    # By default (the server's LoadLimiter ignores batch) the batch answers 200
    partial = call(emu, "batch", token, cmd=cmd)
    assert partial.status_code == 200
    inner = partial.json()["result"]
    assert set(inner["result"]) == {"a"}
    assert inner["result_error"]["b"]["error"] == "OPERATION_TIME_LIMIT"

    # The older reading stays available as a switch
    emu.configure(batch_blocked_method="http_429")
    whole = call(emu, "batch", token, cmd=cmd)
    assert whole.status_code == 429
    assert whole.json()["error"] == "OPERATION_TIME_LIMIT"
    assert "time" not in whole.json()


def test_scripted_faults_are_consumed_in_order(emu: Emulator, token: str) -> None:
    # Given a script: two 502 HTML pages on crm.lead.list, then a JSON 500 on any method
    queued = admin(
        emu,
        "POST",
        "/faults",
        [
            {"target": "rest", "method": "crm.lead.list", "kind": "html", "status": 502, "count": 2},
            {"target": "rest", "kind": "server_error"},
        ],
    )
    assert queued.status_code == 200

    # When requests arrive
    app_info = call(emu, "app.info", token)
    first = call(emu, "crm.lead.list", token)
    second = call(emu, "crm.lead.list", token)
    third = call(emu, "crm.lead.list", token)

    # Then the faults hit in order and then stop
    assert app_info.status_code == 500
    assert app_info.json()["error"] == "INTERNAL_SERVER_ERROR"
    for html in (first, second):
        assert html.status_code == 502
        assert html.headers["Content-Type"].startswith("text/html")
        assert "<html" in html.text.lower()
    assert third.status_code == 200
    assert admin(emu, "GET", "/faults").json()["faults"] == []


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("query_limit", 503, "QUERY_LIMIT_EXCEEDED"),
        ("expired_token", 401, "expired_token"),
        ("invalid_token", 401, "invalid_token"),
        ("overload", 503, "OVERLOAD_LIMIT"),
        ("portal_deleted", 500, "PORTAL_DELETED"),
        ("operation_time_limit", 429, "OPERATION_TIME_LIMIT"),
    ],
)
def test_error_faults(emu: Emulator, token: str, kind: str, status: int, error: str) -> None:
    emu.add_faults([{"target": "rest", "kind": kind}])
    answer = call(emu, "crm.lead.list", token)
    assert answer.status_code == status
    assert answer.json()["error"] == error
    assert "time" not in answer.json()  # error answers carry no time block
    assert call(emu, "crm.lead.list", token).status_code == 200


def test_custom_error_fault_and_bad_fault_definitions(emu: Emulator, token: str) -> None:
    emu.add_faults([{"target": "rest", "kind": "error", "status": 401, "error": "METHOD_CONFIRM_WAITING"}])
    assert call(emu, "app.info", token).json()["error"] == "METHOD_CONFIRM_WAITING"
    for bad in (
        {"target": "rest", "kind": "nope"},
        {"target": "x", "kind": "html"},
        {"kind": "html", "count": 0},
    ):
        answer = admin(emu, "POST", "/faults", [bad])
        assert answer.status_code == 400


def test_slow_fault_and_latency_delay_real_time(emu: Emulator, token: str) -> None:
    emu.add_faults([{"target": "rest", "kind": "slow", "delay": 0.3}])
    started = time.monotonic()
    assert call(emu, "app.info", token).status_code == 200
    assert time.monotonic() - started >= 0.3

    emu.configure(latency_seconds=0.2)
    started = time.monotonic()
    call(emu, "app.info", token)
    assert time.monotonic() - started >= 0.2

    # time_scale turns modeled seconds into real delay: a COUNT page over 300 rows ~ 0.011 s x 20
    emu.configure(latency_seconds=0.0, time_scale=20.0)
    started = time.monotonic()
    call(emu, "crm.lead.list", token, start=0)
    assert time.monotonic() - started >= 0.2


def test_oauth_server_faults(emu: Emulator) -> None:
    pair = emu.issue_tokens()
    emu.add_faults(
        [
            {"target": "oauth", "kind": "server_error", "status": 503},
            {"target": "oauth", "kind": "html", "status": 502},
            {"target": "oauth", "kind": "timeout_after_issue", "delay": 1.0},
        ]
    )
    first = token_request(emu, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert first.status_code == 503
    second = token_request(emu, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert second.status_code == 502
    assert "text/html" in second.headers["Content-Type"]

    # The token is issued, but the client times out before the answer arrives...
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            emu.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": pair["refresh_token"],
                "client_id": emu.client_id,
                "client_secret": emu.client_secret,
            },
            timeout=0.3,
        )
    # ...so the refresh token is spent and the chain moved on without the client.
    retry = token_request(emu, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert retry.status_code == 400
    assert retry.json()["error"] == "invalid_grant"
    chain = next(c for c in emu.tokens() if c["chain_id"] == pair["chain_id"])
    assert chain["refreshes"] == 1


def test_portal_rename_answers_302_to_the_new_address(emu: Emulator, token: str) -> None:
    old_endpoint = emu.client_endpoint
    moved = admin(emu, "POST", "/rename").json()
    assert moved["old_domain"] != moved["portal_domain"] == emu.portal_domain

    answer = requests.post(
        f"{old_endpoint}crm.lead.list?start=-1", json={"auth": token}, allow_redirects=False
    )

    assert answer.status_code == 302
    assert answer.headers["Location"] == f"{emu.client_endpoint}crm.lead.list?start=-1"
    # Re-POSTing to the new address works, and new tokens name the new endpoint
    again = requests.post(answer.headers["Location"], json={"auth": token}, timeout=5)
    assert again.status_code == 200
    assert emu.issue_tokens()["client_endpoint"] == emu.client_endpoint
    # The admin API stays where it was
    stats = admin(emu, "GET", "/stats", None).json()
    assert stats["http_302"] == 1
    assert stats["requests"] == 2
