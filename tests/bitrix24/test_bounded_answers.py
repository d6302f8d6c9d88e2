"""Bounded answers (issue 12 point 1): capped bodies, capped error texts, OAuth calls within the lease.

A 200 MiB answer was read whole (600 MiB peak) and a 7 MB error code (the token inside) came back in a
LeadsFunction answer. The dripping-server deadline tests open sockets, so they live in
tests/bitrix24/test_bounded_answers_sockets.py.
"""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from b24connector.bitrix24.errors import (
    AnswerTooLarge,
    Bitrix24Error,
    OAuthAnswerTooLarge,
    OAuthTransientError,
)
from b24connector.bitrix24.oauth import MAX_OAUTH_ANSWER_BYTES, OAuthClient
from b24connector.bitrix24.rest import MAX_ANSWER_BYTES
from b24connector.leads import error_for
from b24connector.settings import load_settings
from b24connector.token_refresh.policy import RefreshPolicy
from tests.bitrix24.fakes import ACCESS_TOKEN, FakeTime, FakeTransport, Reply, make_client, make_portal


def test_an_oauth_call_never_outlives_the_refresh_lease() -> None:
    env = {
        "BITRIX24_CLIENT_ID": "local.x", "CLIENT_SECRET_ID": "s", "CURSOR_SECRET_ID": "c",
        "PORTALS_TABLE": "p", "STATES_TABLE": "st", "RATE_LIMIT_TABLE": "r", "TOKEN_KEY_ID": "k",
        "REFRESH_QUEUE_URL": "q", "RESCUE_QUEUE_URL": "rq", "LIFECYCLE_QUEUE_URL": "lq",
    }  # fmt: skip
    for timeout in ("1", "3", "10", "30"):
        settings = load_settings({**env, "HTTP_TIMEOUT_SECONDS": timeout})
        client = OAuthClient.from_settings(settings, lambda: "secret-value")
        # Even without a deadline from the lease holder, a call ends before the lease can lapse.
        assert client.total_timeout < RefreshPolicy.from_settings(settings).lease_seconds


def test_a_refresh_with_no_time_left_is_not_sent() -> None:
    transport = FakeTransport()
    fake_time = FakeTime()
    client = OAuthClient(
        "local.app", lambda: "secret-value", ["https://oauth.bitrix.info"],
        session=_session(transport), monotonic=fake_time.monotonic,
    )  # fmt: skip
    with pytest.raises(OAuthTransientError) as caught:
        client.refresh("refresh-token-value", deadline=fake_time.mono + 0.01)
    assert (caught.value.request_sent, transport.sent) == (False, [])


class _Endless:
    """A streamed body of `size` zero bytes, produced as it is read (nothing is allocated up front)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.read_bytes = 0

    def read1(self, amount: int = -1) -> bytes:
        chunk = min(self.left, amount if amount > 0 else 65536)
        self.left -= chunk
        self.read_bytes += chunk
        return b"0" * chunk

    def read(self, amount: int = -1) -> bytes:
        return self.read1(amount)

    def close(self) -> None:
        """Nothing to release."""


def _session(transport: FakeTransport) -> Any:
    from tests.bitrix24.fakes import session_with

    return session_with(transport)


def _peak(call: Any) -> tuple[BaseException, int]:
    tracemalloc.start()
    try:
        try:
            call()
        except Bitrix24Error as exc:
            return exc, tracemalloc.get_traced_memory()[1]
        raise AssertionError("the call did not fail")
    finally:
        tracemalloc.stop()


def test_a_200_mib_portal_answer_is_cut_at_the_cap_in_bounded_memory(fake_time: FakeTime) -> None:
    body = _Endless(200 * 1024 * 1024)
    transport = FakeTransport().queue(Reply(raw=body))
    client = make_client(transport, fake_time)
    error, peak = _peak(lambda: client.call(make_portal(), "crm.lead.list"))
    assert isinstance(error, AnswerTooLarge)
    assert error.code == "ANSWER_TOO_LARGE"
    assert body.read_bytes <= MAX_ANSWER_BYTES + 65536  # reading stopped at the cap
    assert peak < 2 * MAX_ANSWER_BYTES, peak  # before: the whole 200 MiB (600 MiB peak)


def test_a_declared_oversized_answer_is_refused_before_reading(fake_time: FakeTime) -> None:
    body = _Endless(200 * 1024 * 1024)
    headers = {"Content-Length": str(200 * 1024 * 1024)}
    transport = FakeTransport().queue(Reply(raw=body, headers=headers))
    with pytest.raises(AnswerTooLarge):
        make_client(transport, fake_time).call(make_portal(), "crm.lead.list")
    assert body.read_bytes == 0


def test_an_oversized_oauth_answer_is_a_transient_error() -> None:
    body = _Endless(MAX_OAUTH_ANSWER_BYTES * 16)
    transport = FakeTransport().queue(Reply(raw=body))
    client = OAuthClient(
        "local.app", lambda: "secret-value", ["https://oauth.bitrix.info"], session=_session(transport)
    )
    with pytest.raises(OAuthAnswerTooLarge) as caught:
        client.refresh("refresh-token-value")
    assert caught.value.request_sent is True
    assert body.read_bytes <= MAX_OAUTH_ANSWER_BYTES + 65536


def _huge_error(token: str) -> dict[str, Any]:
    return {
        "error": "ERROR_" + token + "\u202e<script>" + "A" * 7_000_000,
        "error_description": "bad \x00\x1b[31m" + token + " é" * 300_000,
    }


def test_a_7_mb_error_code_is_capped_and_never_echoes_the_token(fake_time: FakeTime) -> None:
    transport = FakeTransport().queue(Reply(status=400, payload=_huge_error(ACCESS_TOKEN)))
    with pytest.raises(Bitrix24Error) as caught:
        make_client(transport, fake_time).call(make_portal(), "crm.lead.list")
    error = caught.value
    assert len(error.code) <= 64
    assert error.code.isascii()
    assert len(error.description) <= 200
    assert error.description.isprintable()
    answer = json.dumps(error_for(error).answer())
    assert len(answer) < 1_000  # before: over 7 MB, past Lambda's 6 MB answer limit
    for text in (answer, str(error), repr(error)):
        assert ACCESS_TOKEN not in text
        assert ACCESS_TOKEN[:12] not in text


def test_a_huge_batch_sub_error_is_capped_and_never_echoes_the_token(fake_time: FakeTime) -> None:
    payload = {"result": {"result": {}, "result_error": {"c0": _huge_error(ACCESS_TOKEN)}}, "time": {}}
    transport = FakeTransport().queue(Reply(payload=payload))
    result = make_client(transport, fake_time).batch(make_portal(), {"c0": ("crm.lead.list", {})})
    error = result.errors["c0"]
    assert len(error.code) <= 64
    assert ACCESS_TOKEN not in error.code + error.description


def test_a_huge_oauth_error_is_capped_and_never_echoes_the_secret() -> None:
    secret = "client-secret-value-0123456789"
    transport = FakeTransport().queue(
        Reply(
            status=400,
            body=json.dumps({"error": secret + "X" * 50_000, "error_description": secret}).encode(),
        )
    )
    client = OAuthClient(
        "local.app", lambda: secret, ["https://oauth.bitrix.info"], session=_session(transport)
    )
    with pytest.raises(Bitrix24Error) as caught:
        client.refresh("refresh-token-value")
    assert secret not in str(caught.value)
    assert len(str(caught.value)) < 400


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()
