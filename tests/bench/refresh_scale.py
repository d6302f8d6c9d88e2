"""Section 4: the scheduled refresh over many portals (sweep through the due index, queue, workers)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.bench.common import Section, cpu_seconds, fmt
from tests.bench.cost import Drain, drain_model
from tests.bench.dynamo_proxy import DynamoSerializingProxy
from tests.bench.oauth_facade import OAuthFacade
from tests.bench.stack import BenchStack, bench_stack

_DAY = 86_400
WORKERS = 10  # RefreshWorkerFunction's reserved concurrency (template WorkerConcurrency default)
OAUTH_LATENCY = 0.05


@contextlib.contextmanager
def _aws_env(endpoint: str) -> Iterator[None]:
    """Point this process's boto3/PynamoDB at the stack's moto server while seeding."""
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL",)}
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _seed(bench: BenchStack, facade: OAuthFacade, portals: int, due: int) -> dict[str, Any]:
    """Write `portals` records with the vault's own store and models; `due` of them are due now.

    The due ones hold real KMS ciphertext (TokenCipher on moto) of chains the emulator issued, each
    adopted by the facade under its own member_id. The others are never decrypted or refreshed (they
    are not due), so they carry a placeholder blob: only the sweep's index reads touch them.
    """
    from b24connector.bitrix24.tokens import parse_token_payload
    from b24connector.settings import load_settings
    from b24connector.vault import open_vault
    from b24connector.vault.models import HEALTH_ACTIVE, due_shard_of

    env = bench.function_env("RefreshWorkerFunction")
    env.pop("AWS_ENDPOINT_URL", None)
    settings = load_settings(env)
    vault = open_vault(settings)
    store = vault.portals
    now = int(time.time())
    began = time.perf_counter()
    idle = portals - due
    with store.model.batch_write() as batch:
        for i in range(idle):
            member_id = f"idle-{i:06d}"
            batch.save(
                store.model(
                    member_id,
                    version=1,
                    health=HEALTH_ACTIVE,
                    domain=f"idle{i}.bitrix24.com",
                    client_endpoint=f"https://idle{i}.bitrix24.com/rest/",
                    server_endpoint=f"{facade.url}/rest/",
                    scope="crm",
                    status="L",
                    token_ciphertext=b"placeholder: not due, never decrypted",
                    access_expires_at=now + 3600,
                    refresh_obtained_at=now - (i % 20) * _DAY,
                    due_shard=due_shard_of(member_id, settings.due_index_shards),
                    refresh_due_at=now + (settings.refresh_after_days - i % 20) * _DAY,
                    created_at=now,
                    updated_at=now,
                )
            )
    idle_seconds = time.perf_counter() - began
    obtained = now - (settings.refresh_after_days + 1) * _DAY
    emulator = bench.emulator
    server_endpoint = f"{facade.url}/rest/"

    def due_portal(i: int) -> str:
        member_id = f"due-{i:05d}"
        issued = emulator.issue_tokens()
        tokens = parse_token_payload(issued, now=obtained)
        tokens = dataclasses.replace(
            tokens, member_id=member_id, obtained_at=obtained, server_endpoint=server_endpoint
        )
        # The portal's own address, as in production: its refresh answers name the same host, so no
        # refresh looks like a rename (which would add a DomainIndex Query per refresh).
        store.save_grant(tokens, domain=emulator.portal_domain, role="admin")
        facade.adopt(tokens.refresh_token, member_id)
        return member_id

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        due_ids = list(pool.map(due_portal, range(due)))
    return {
        "due_ids": due_ids,
        "idle_write_seconds": idle_seconds,
        "due_write_seconds": time.perf_counter() - began,
        "model": store.model,
    }


def run(section: Section, *, portals: int, due: int) -> None:
    """Seed, sweep once, drain the queue with WORKERS workers; check reads, exactly-once, drain time."""
    facade = OAuthFacade(OAUTH_LATENCY).start()
    counter = DynamoSerializingProxy(serialize=False).start()
    env = {"OAUTH_SERVERS": facade.url, "AWS_ENDPOINT_URL": counter.url}
    try:
        with bench_stack(leads=0, workers=WORKERS, env_overrides=env, install=False) as bench:
            facade.upstream = bench.emulator.oauth_url.rstrip("/")
            counter.upstream = bench.stack.aws_endpoint_url
            with _aws_env(bench.stack.aws_endpoint_url):
                seeded = _seed(bench, facade, portals, due)
                result = _sweep_and_drain(bench, facade, counter, seeded, due)
    finally:
        counter.stop()
        facade.stop()
    result.update(portals=portals, due=due, idle_write_seconds=seeded["idle_write_seconds"])
    result["due_write_seconds"] = seeded["due_write_seconds"]
    section.data.update({k: v for k, v in result.items() if k not in {"model"}})
    _report(section, result)


def _sweep_and_drain(
    bench: BenchStack, facade: OAuthFacade, counter: DynamoSerializingProxy, seeded: dict[str, Any], due: int
) -> dict[str, Any]:
    stack = bench.stack
    portals_table = bench.table("PortalsTable")
    # Seeding wrote every record into the PortalsTable stream: publish that backlog (PublisherFunction)
    # first, so the measured drain holds only what the refreshes cause.
    backlog_began = time.perf_counter()
    stack.drain_queues()
    backlog_seconds = time.perf_counter() - backlog_began
    # Warm workers: the drain is measured at steady state (cold starts are section 2's subject).
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(lambda _: stack.invoke("RefreshWorkerFunction", {"Records": []}), range(WORKERS)))
    bench.emulator.reset()
    counter.reset_counts()
    began = time.perf_counter()
    run = stack.run_schedule("RefreshFunction", drain=False)
    sweep_seconds = time.perf_counter() - began
    sweep = run.result.json() or {}
    sweep_counts = counter.snapshot()
    counter.reset_counts()
    cpu_before = _cpu(bench)
    began = time.perf_counter()
    drain = stack.drain_queues()
    drain_seconds = time.perf_counter() - began
    cpu_after = _cpu(bench)
    cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
    drain_counts = counter.snapshot()
    stats = bench.emulator.stats()
    versions = {item.member_id: int(item.version) for item in seeded["model"].batch_get(seeded["due_ids"])}
    refreshed_once = sum(
        1 for m in seeded["due_ids"] if facade.refreshes.get(m) == 1 and versions.get(m) == 2
    )
    calls = drain_counts["calls"]
    return {
        "sweep": sweep,
        "seeding_backlog_seconds": backlog_seconds,
        "sweep_seconds": sweep_seconds,
        "sweep_calls": sweep_counts["calls"],
        "items_read": sweep_counts["items_read"].get(portals_table, 0),
        "scans": sum(v for k, v in sweep_counts["calls"].items() if k.endswith(".Scan")),
        "drain_seconds": drain_seconds,
        "drain": drain.as_dict() | {"batches": len(drain.batches)},
        "token_requests": stats["token_requests"],
        "token_errors": stats["token_errors"],
        "refreshed_exactly_once": refreshed_once,
        "refreshed_more_than_once": sum(1 for c in facade.refreshes.values() if c > 1),
        "facade_failures": sum(facade.failures.values()),
        "calls_per_refresh": {k: v / max(due, 1) for k, v in sorted(calls.items())},
        "aws_calls_per_refresh": sum(calls.values()) / max(due, 1),
        # The client secret is read once per container (cached for SECRET_MAX_AGE_SECONDS), not per refresh.
        "aws_calls_per_refresh_warm": sum(v for k, v in calls.items() if not k.endswith(".GetSecretValue"))
        / max(due, 1),
        "ideal_seconds": due * OAUTH_LATENCY / WORKERS,
        "cpu_seconds": cpu,
        "cpu_floor_seconds": sum(cpu.values()) / (os.cpu_count() or 1),
    }


def _cpu(bench: BenchStack) -> dict[str, float]:
    """CPU seconds used so far by the refresh workers, the moto server and this process (emulator etc.)."""
    runtime = bench.stack.runtimes["RefreshWorkerFunction"]
    with runtime._cond:  # read-only look at the pool's processes
        pids = [worker.process.pid for worker in runtime._all]
    moto = bench.stack._moto
    times = os.times()
    return {
        "refresh workers": sum(cpu_seconds(pid) or 0.0 for pid in pids),
        "moto server": (cpu_seconds(moto.pid) or 0.0) if moto is not None else 0.0,
        "bench process (emulator, OAuth facade, counting proxy, SQS poller)": times.user + times.system,
    }


def _report(section: Section, r: dict[str, Any]) -> None:
    due, ideal = r["due"], r["ideal_seconds"]
    ratio = r["items_read"] / due if due else float("nan")
    section.intro = (
        f"{r['portals']:,} portal records in the PortalsTable, {due:,} of them due (written with the vault's "
        "PortalStore/PortalModel: the due ones through save_grant, i.e. real KMS ciphertext from moto of "
        "token chains the emulator issued; the rest with a placeholder blob they never need). One "
        "RefreshFunction run, then RefreshQueue drained by RefreshWorkerFunction with "
        f"{WORKERS} concurrent workers (started and warm before the drain); the OAuth token endpoint answers after {OAUTH_LATENCY * 1000:.0f} ms "
        "(a facade in front of the emulator's OAuth server gives each chain its own member_id). AWS "
        "calls and items read are counted by a proxy in front of moto."
    )
    per_call = ", ".join(f"{k.split('.')[-1]} {v:.2f}" for k, v in r["calls_per_refresh"].items())
    rows = [
        ["sweep: portals due / queued", f"{r['sweep'].get('due')} / {r['sweep'].get('queued')}"],
        ["sweep: items read (Query ScannedCount) ÷ due", f"{r['items_read']:,} ÷ {due:,} = {ratio:.3f}"],
        ["sweep: Scan calls", fmt(r["scans"])],
        ["sweep: seconds", fmt(r["sweep_seconds"])],
        [
            "drain: messages received / deleted / failed",
            f"{r['drain']['received']} / {r['drain']['deleted']} / {r['drain']['failed']}",
        ],
        ["token requests at the OAuth server", fmt(r["token_requests"])],
        ["due portals refreshed exactly once (version 1 → 2)", f"{r['refreshed_exactly_once']:,} / {due:,}"],
        ["portals refreshed more than once", fmt(r["refreshed_more_than_once"])],
        [
            "drain seconds (ideal = due x latency ÷ workers)",
            f"{r['drain_seconds']:.2f} (ideal {ideal:.2f}, {r['drain_seconds'] / ideal:.2f}x)",
        ],
        [
            "AWS calls per refresh (warm workers, distinct portals)",
            f"{r['aws_calls_per_refresh']:.2f}: {per_call}",
        ],
        [
            "CPU seconds during the drain (per refresh, ms)",
            "; ".join(f"{k} {v:.1f} s ({v / due * 1000:.1f})" for k, v in r["cpu_seconds"].items()),
        ],
        [
            f"CPU-bound floor on this machine (CPU ÷ {os.cpu_count()} cores)",
            f"{r['cpu_floor_seconds']:.1f} s ({r['cpu_floor_seconds'] / ideal:.1f}x ideal)",
        ],
        [
            "seeding seconds (idle / due records; publishing their stream backlog, not measured)",
            f"{r['idle_write_seconds']:.1f} / {r['due_write_seconds']:.1f}; {r['seeding_backlog_seconds']:.1f}",
        ],
    ]
    section.table("Refresh at scale", ["measure", "value"], rows)
    _drain_model(section, r)
    section.check(
        "refresh: items read by the sweep ÷ due",
        f"{ratio:.3f} ({r['scans']} scans)",
        "≤ 1.1, no Scan",
        ratio <= 1.1 and r["scans"] == 0,
    )
    section.check(
        "refresh: every due portal refreshed exactly once",
        f"{r['refreshed_exactly_once']:,} / {due:,}; {r['token_requests']} token requests",
        f"{due:,} / {due:,}; {due} token requests",
        r["refreshed_exactly_once"] == due and r["token_requests"] == due,
    )
    section.check(
        "refresh: AWS calls per refresh (warm workers, distinct portals)",
        f"{r['aws_calls_per_refresh_warm']:.2f} per refresh + each container's cached client-secret read"
        f" = {r['aws_calls_per_refresh']:.2f} ({per_call})",
        "≤ 4",
        r["aws_calls_per_refresh_warm"] <= 4,
        "each refresh: lease UpdateItem, Decrypt, Encrypt, commit UpdateItem; more means a read crept back in",
    )
    if due < 1_000:
        section.notes.append("Drain time is judged at 1,000 due portals (fixed costs dominate a smoke run).")
        return
    section.check(
        f"refresh: drain time with {WORKERS} workers",
        f"{r['drain_seconds']:.2f} s = {r['drain_seconds'] / ideal:.2f}x ideal",
        f"≤ 2x ideal ({2 * ideal:.1f} s)",
        r["drain_seconds"] <= 2 * ideal,
        f"everything shares {os.cpu_count()} cores here: the drain used {sum(r['cpu_seconds'].values()):.1f} CPU s, "
        f"a floor of {r['cpu_floor_seconds']:.1f} s before any latency",
    )


def _drain_model(section: Section, r: dict[str, Any]) -> None:
    """The drain of 10,000 due portals at concurrency 10 in AWS, modeled from this run's CPU and calls."""
    due = max(r["due"], 1)
    measured = Drain(
        worker_cpu_ms=r["cpu_seconds"]["refresh workers"] / due * 1000,
        aws_calls=r["aws_calls_per_refresh_warm"],
    )
    rows = []
    for latency in (OAUTH_LATENCY, 0.2):
        for mb in (512, 1024, 1769):
            per, drain, ratio = drain_model(measured, 10_000, WORKERS, latency, mb)
            rows.append(
                [f"{latency * 1000:.0f} ms", str(mb), f"{per * 1000:.0f}", f"{drain:.0f}", f"{ratio:.2f}x"]
            )
    section.table(
        f"Drain model: 10,000 due portals, {WORKERS} workers, in AWS (from this run: worker CPU "
        f"{measured.worker_cpu_ms:.1f} ms and {measured.aws_calls:.2f} AWS calls per refresh; "
        f"{measured.aws_call_ms:.0f} ms per AWS call and {measured.batch_overhead_ms:.0f} ms per batch assumed)",
        ["OAuth latency", "worker MB", "ms per refresh", "drain s", "÷ ideal"],
        rows,
    )
