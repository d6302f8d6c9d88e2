"""Admin API, stats, runtime config, concurrency, the CLI, the request parser and seeding speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from bitrix24_emulator import Emulator
from bitrix24_emulator.leads import generate_leads
from bitrix24_emulator.phpquery import build_query, parse_query, php_array
from tests.infra.emulator.helpers import admin, call
from tests.support.servers import REPO_ROOT

REPO = REPO_ROOT


def test_stats_fields_and_reset(emu: Emulator, token: str) -> None:
    call(emu, "crm.lead.list", token, start=0)
    call(emu, "batch", token, cmd={"a": "crm.lead.list?start=-1", "b": "app.info"})
    requests.post(emu.token_url, data={"grant_type": "refresh_token"}, timeout=5)

    stats = admin(emu, "GET", "/stats").json()

    for key in (
        "requests",
        "count_queries",
        "operating_seconds",
        "token_requests",
        "http_503",
        "http_429",
        "methods",
        "max_concurrent_requests",
        "per_second",
        "request_timestamps",
    ):
        assert key in stats, key
    assert stats["requests"] == 2
    assert stats["count_queries"] == 1
    assert stats["token_requests"] == 1
    assert stats["methods"]["crm.lead.list"]["calls"] == 2
    assert sum(count for _second, count in stats["per_second"]) == 2
    assert len(stats["request_timestamps"]) == 2

    assert admin(emu, "POST", "/reset").json() == {"reset": True}
    cleared = admin(emu, "GET", "/stats").json()
    assert cleared["requests"] == cleared["count_queries"] == cleared["token_requests"] == 0
    assert cleared["operating_seconds"] == 0


def test_runtime_config_changes_are_validated(emu: Emulator) -> None:
    changed = admin(
        emu, "POST", "/config", {"latency_seconds": 0.01, "rate_plan": "enterprise", "time_scale": 0}
    )
    assert changed.status_code == 200
    assert changed.json()["rate_plan"] == "enterprise"
    assert "client_secret" not in changed.json()
    for bad in (
        {"rate_plan": "gold"},
        {"latency_seconds": -1},
        {"member_id": "x"},
        {"operating_limit_seconds": "a"},
    ):
        assert admin(emu, "POST", "/config", bad).status_code == 400, bad
    assert admin(emu, "GET", "/config").json()["latency_seconds"] == 0.01


def test_token_admin_endpoints(emu: Emulator) -> None:
    issued = admin(emu, "POST", "/tokens/issue", {}).json()
    chains = admin(emu, "GET", "/tokens").json()["chains"]
    assert [c["access_token"] for c in chains] == [issued["access_token"]]

    assert admin(emu, "POST", "/tokens/expire", {"member_id": "someone-else"}).json() == {"expired": 0}
    assert admin(emu, "POST", "/tokens/expire", {"member_id": emu.member_id}).json() == {"expired": 1}
    assert call(emu, "app.info", issued["access_token"]).json()["error"] == "expired_token"
    assert admin(emu, "POST", "/tokens/age-refresh", {"days": 181}).json()["aged"] == 1
    assert admin(emu, "POST", "/tokens/invalidate-refresh", {}).json()["invalidated"] == 1

    approved = admin(emu, "POST", "/authorize", {"state": "abc"}).json()
    assert "state=abc" in approved["location"]
    assert f"code={approved['code']}" in approved["location"]


def test_seed_and_clock_endpoints(emu: Emulator, token: str) -> None:
    summary = admin(emu, "POST", "/leads/seed", {"count": 120, "seed": 9}).json()
    assert summary["count"] == 120
    assert admin(emu, "GET", "/leads").json() == summary
    body = call(emu, "crm.lead.list", token, select=["ID"], start=0).json()
    assert body["total"] == 120

    before = emu.clock.now()
    moved = admin(emu, "POST", "/clock", {"advance_seconds": 3600, "freeze": True}).json()
    assert moved["now"] >= before + 3600
    assert moved["frozen"] is True
    assert call(emu, "app.info", token).json()["error"] == "expired_token"


def test_info_and_credentials(emu: Emulator) -> None:
    info = admin(emu, "GET", "/info").json()
    assert info["portal_domain"] == emu.portal_domain
    assert info["oauth_url"] == emu.oauth_url
    assert "client_secret" not in json.dumps(info)
    credentials = admin(emu, "GET", "/credentials").json()
    assert credentials["client_secret"] == emu.client_secret
    assert admin(emu, "GET", "/nope").status_code == 404
    assert admin(emu, "DELETE", "/stats").status_code == 405


def test_24_concurrent_clients(emu_factory: Callable[..., Emulator]) -> None:
    # Given a portal without rate limiting and 24 clients with their own chains
    emulator = emu_factory(leads=2000, rate_plan="off", latency_seconds=0.02)
    tokens = [emulator.issue_tokens()["access_token"] for _ in range(24)]
    ids = emulator.state.leads.ids()

    def export(token: str) -> list[int]:
        seen: list[int] = []
        last = 0
        with requests.Session() as session:
            while True:
                rows = session.post(
                    f"{emulator.client_endpoint}crm.lead.list",
                    json={
                        "auth": token,
                        "select": ["ID"],
                        "filter": {">ID": last},
                        "order": {"ID": "ASC"},
                        "start": -1,
                    },
                    timeout=10,
                ).json()["result"]
                seen += [int(r["ID"]) for r in rows]
                if len(rows) < 50:
                    return seen
                last = seen[-1]

    # When they export at the same time
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(export, tokens))

    # Then every client got every lead once and the server saw real concurrency
    assert all(result == ids for result in results)
    stats = emulator.stats()
    assert stats["requests"] == 24 * (len(ids) // 50 + 1)
    assert stats["max_concurrent_requests"] >= 8
    assert stats["concurrent_requests"] == 0


def test_cli_prints_its_addresses_and_serves(tmp_path: Path) -> None:
    state_file = tmp_path / "emulator.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("functions", "infra", "."))}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bitrix24_emulator",
            "--host",
            "127.0.0.1",
            "--portal-port",
            "0",
            "--oauth-port",
            "0",
            "--leads",
            "500",
            "--redirect-uri",
            "http://127.0.0.1:9/cb",
            "--json",
            "--state-file",
            str(state_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        facts = json.loads(process.stdout.readline())
        assert facts["portal_url"].startswith("http://127.0.0.1:")
        assert facts["oauth_url"] != facts["portal_url"]
        assert facts["admin_url"] == facts["portal_url"] + "/_emulator"
        assert "client_secret" not in facts
        assert facts["leads"]["count"] == 500
        saved = json.loads(state_file.read_text())
        assert saved["client_secret"]
        assert state_file.stat().st_mode & 0o077 == 0
        stats = requests.get(f"{facts['admin_url']}/stats", timeout=5).json()
        assert stats["requests"] == 0
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_php_bracket_parsing_and_serialization() -> None:
    parsed = parse_query(
        "select%5B%5D=ID&select[]=TITLE&filter[%3E%3DDATE_MODIFY]=2024-01-01&filter[>ID]=5"
        "&fields[PHONE][0][VALUE]=1&cmd[c0]=crm.lead.list%3Fstart%3D-1&start=-1"
    )
    assert parsed == {
        "select": ["ID", "TITLE"],
        "filter": {">=DATE_MODIFY": "2024-01-01", ">ID": "5"},
        "fields": {"PHONE": [{"VALUE": "1"}]},
        "cmd": {"c0": "crm.lead.list?start=-1"},
        "start": "-1",
    }
    assert php_array({}) == []
    assert php_array({"0": "a", "1": "b"}) == ["a", "b"]
    assert php_array({"a": 1}) == {"a": 1}
    assert parse_query(build_query({"filter": {">ID": 5}, "select": ["ID"]})) == {
        "filter": {">ID": "5"},
        "select": ["ID"],
    }


@pytest.mark.slow
def test_100k_leads_seed_in_about_a_second() -> None:
    started = time.perf_counter()
    leads = generate_leads(100_000, seed=1, deleted_ratio=0.1)
    elapsed = time.perf_counter() - started
    assert len(leads) == 100_000
    ids = [lead.id for lead in leads]
    assert ids == sorted(set(ids))
    assert 0.07 < 1 - len(ids) / ids[-1] < 0.13  # ~10 % of IDs deleted
    assert elapsed < 3.0  # ~0.4-0.8 s on a developer machine; headroom for loaded CI runners
    assert generate_leads(50, 1, 0.1)[7].title == leads[7].title  # deterministic
