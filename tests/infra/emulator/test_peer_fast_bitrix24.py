"""The published peer client fast_bitrix24 exports every seeded lead from the emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from fast_bitrix24 import Bitrix

from bitrix24_emulator import Emulator, EmulatorConfig

LEADS = 10_000


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(leads=LEADS, seed=7)) as emu:
        yield emu


class OAuthTokens:
    """A token_func that does what an app must: code exchange once, then rotate and keep the refresh token."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.refresh_token: str | None = None
        self.calls = 0

    async def token(self) -> str:
        self.calls += 1
        return await asyncio.to_thread(self._fetch)

    def _fetch(self) -> str:
        if self.refresh_token is None:
            grant = {"grant_type": "authorization_code", "code": self.emu.authorization_code()}
        else:
            grant = {"grant_type": "refresh_token", "refresh_token": self.refresh_token}
        answer = requests.post(
            self.emu.token_url,
            data={**grant, "client_id": self.emu.client_id, "client_secret": self.emu.client_secret},
            timeout=5,
        )
        answer.raise_for_status()
        body = answer.json()
        self.refresh_token = body["refresh_token"]
        return str(body["access_token"])


def _client(emu: Emulator, tokens: OAuthTokens) -> Bitrix:
    # fast_bitrix24 builds `webhook + method` and POSTs JSON with `auth` added (srh.py).
    return Bitrix(emu.client_endpoint, token_func=tokens.token, verbose=False, ssl=False)


def _get_all(bitrix: Bitrix, params: dict[str, Any]) -> list[dict[str, Any]]:
    # In a thread of its own: fast_bitrix24's sync wrapper returns a Task instead of the rows when the
    # calling thread has a running event loop, and a browser test earlier in the session (Playwright's
    # sync API) can leave one in the main thread. A fresh thread has no loop, so the wrapper runs its own.
    with warnings.catch_warnings(), ThreadPoolExecutor(1) as thread:
        # fast_bitrix24's sync wrapper still calls asyncio.get_event_loop().
        warnings.simplefilter("ignore", DeprecationWarning)
        result = thread.submit(bitrix.get_all, "crm.lead.list", params).result()
    assert isinstance(result, list)
    return result


def _report(capsys: pytest.CaptureFixture[str], label: str, stats: dict[str, Any]) -> None:
    keys = ("requests", "count_queries", "operating_seconds", "token_requests", "http_503", "http_429")
    with capsys.disabled():
        print(f"\n[fast_bitrix24 {label}] " + json.dumps({k: stats[k] for k in keys}))


def test_get_all_exports_every_lead_exactly_once(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the emulator with 10,000 leads and an OAuth token_func
    emulator.reset()
    tokens = OAuthTokens(emulator)
    bitrix = _client(emulator, tokens)

    # When fast_bitrix24 fetches all leads (parallel start offsets, COUNT on every page)
    rows = _get_all(bitrix, {"select": ["ID", "TITLE", "DATE_MODIFY"]})

    # Then every ID comes back exactly once
    ids = [int(row["ID"]) for row in rows]
    assert len(ids) == LEADS
    assert len(set(ids)) == LEADS
    with emulator.state.lock:
        expected = emulator.state.leads.ids()
    assert sorted(ids) == expected
    # And the cost matches the model: 1 + ceil(199 / 50) HTTP requests, one COUNT per page
    stats = emulator.stats()
    pages = LEADS // 50
    assert stats["requests"] == 1 + -(-(pages - 1) // 50)
    assert stats["count_queries"] == pages
    assert stats["operating_seconds"] == pytest.approx(pages * (0.005 + 20.9e-6 * LEADS), rel=1e-6)
    assert stats["token_requests"] == 1
    assert stats["http_503"] == 0
    assert stats["http_429"] == 0
    _report(capsys, f"{LEADS} leads", stats)


def test_token_func_refreshes_after_expiry(emulator: Emulator) -> None:
    # Given a client that already holds a token
    tokens = OAuthTokens(emulator)
    bitrix = _client(emulator, tokens)
    _get_all(bitrix, {"select": ["ID"], "filter": {"<=ID": 120}})
    first_calls = tokens.calls

    # When every access token expires
    emulator.expire_access_tokens()
    rows = _get_all(bitrix, {"select": ["ID"], "filter": {">ID": 100, "<=ID": 400}})

    # Then fast_bitrix24 got a 401, called token_func once more (a refresh), and finished
    assert tokens.calls == first_calls + 1
    ids = sorted(int(r["ID"]) for r in rows)
    with emulator.state.lock:
        expected = [i for i in emulator.state.leads.ids() if 100 < i <= 400]
    assert ids == expected


def test_parallel_offset_paging_trips_the_operating_limit(emulator: Emulator) -> None:
    # Given a lower operating limit (30 s per method per 10 minutes) than 200 counted pages cost (~43 s)
    emulator.reset()
    emulator.configure(operating_limit_seconds=30.0)
    try:
        bitrix = _client(emulator, OAuthTokens(emulator))
        # When fast_bitrix24 pages through everything with start offsets
        # Then the method gets blocked: a whole batch answers HTTP 429 or its sub-calls fail with
        # OPERATION_TIME_LIMIT, and fast_bitrix24 gives up (it retries neither)
        with pytest.raises(Exception, match=r"429|OPERATION_TIME_LIMIT"):
            _get_all(bitrix, {"select": ["ID"]})
        stats = emulator.stats()
        assert stats["http_429"] + stats["batch_errors"].get("OPERATION_TIME_LIMIT", 0) >= 1
    finally:
        emulator.configure(operating_limit_seconds=420.0)  # back to the default
        emulator.reset()
