"""Section `realistic`: 100,000 leads with the portal's modeled server time applied in full (time scale 1.0).

At time scale 0.01 the export is a JSON-parsing race on the bench machine; at 1.0 every batch costs
what the emulator models a real portal's server to spend on it, so what parallel ID windows win (or a
client's COUNT pages cost) shows up in wall time as it would in production.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.bench.common import SELECT, Section, cpu_seconds, fmt, median, run_child
from tests.bench.stack import BenchStack

N = 100_000
LATENCIES = (0.05, 0.15)  # seconds per request: a nearby portal, and one across a continent
PAGE_LIMIT = 20_000  # LeadsFunction's largest page (leads.MAX_LIMIT)
RATE, BURST = 2.0, 50  # the standard plan's leaky bucket, for every client
MAX_PARTS = 16  # b24connector_client.MAX_PARALLEL: the most parts the first answer can choose
# fast_bitrix24 pays a COUNT per page: about 4,200 modeled server seconds for 100,000 leads, so at
# time scale 1.0 one run takes minutes. It gets this long, then counts as "did not finish".
PEER_TIMEOUT = 300.0
SETTINGS = {"latency_seconds": LATENCIES[0], "time_scale": 1.0, "rate_plan": "standard"}


@dataclass(frozen=True)
class Variant:
    """One client run."""

    key: str
    client: str
    label: str
    operating_limit: float = 480.0
    timeout: float = 600.0


AUTO = Variant(
    "leads_function", "leads_function_auto", "ours: LeadsFunction, fetch_leads() (client picks parts)"
)
RAW = Variant("raw", "ours_parallel", "ours: raw FastLister, as many chains as the parts")
# The same lister paced as LeadsFunction is (the shared DynamoDB bucket, one pacing write per request):
# LeadsFunction ÷ this is LeadsFunction's overhead without the cost of shared pacing.
RAW_SHARED = Variant(
    "raw_shared", "ours_parallel", "ours: raw FastLister, as many chains, paced through the DynamoDB bucket"
)
B24 = Variant("b24pysdk", "b24pysdk", "b24pysdk as_list_fast (480 s limit on)")
FB_ON = Variant("fb_limit", "fast_bitrix24", "fast_bitrix24 get_all (480 s limit on)", 480.0, PEER_TIMEOUT)
FB_OFF = Variant("fb_off", "fast_bitrix24", "fast_bitrix24 get_all (limit off, reference)", 0.0, PEER_TIMEOUT)


def _child(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        return run_child("tests.bench.export_client", job, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            "client": job["client"],
            "rows": 0,
            "unique_ids": 0,
            "wall_seconds": timeout,
            "error": f"did not finish within {timeout:.0f} s (stopped)",
            "maxrss_kb": 0,
        }


def _idle_seconds(per_second: list[list[int]]) -> int:
    """Whole seconds between the first and the last request in which the portal saw no request."""
    if not per_second:
        return 0
    busy = {second for second, count in per_second if count}
    return max(busy) - min(busy) + 1 - len(busy)


def workers_cpu(bench: BenchStack) -> float:
    """CPU seconds used so far by every LeadsFunction worker process (what Lambda would bill as busy)."""
    runtime = bench.stack.runtimes["LeadsFunction"]
    with runtime._cond:  # read-only look at the pool's processes
        pids = [worker.process.pid for worker in runtime._all]
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def measure(bench: BenchStack, variant: Variant, n: int, token: str, **extra: Any) -> dict[str, Any]:
    """One export of `n` leads by `variant` in a fresh process, with the emulator's view of it."""
    emulator = bench.emulator
    bench.reset_portal(operating_limit=variant.operating_limit)
    job = {
        "client": variant.client,
        "select": SELECT,
        "client_endpoint": emulator.client_endpoint,
        "domain": emulator.portal_domain,
        "client_id": emulator.client_id,
        "token": token,
        "rate": RATE,
        "burst": BURST,
        "workers": 4,
        "lambda_endpoint_url": bench.stack.lambda_endpoint_url,
        "region": bench.stack.aws_region,
        "member_id": bench.member_id,
        "page_limit": PAGE_LIMIT,
        **extra,
    }
    leads_function = variant.client.startswith("leads_function")
    load = os.getloadavg()[0]
    cpu_before = workers_cpu(bench) if leads_function else 0.0
    result = _child(job, variant.timeout)
    stats = emulator.stats()
    if leads_function:
        result["lambda_cpu_seconds"] = workers_cpu(bench) - cpu_before
    result.update(
        load_average=load,
        requests=stats["requests"],
        count_pages=stats["count_queries"],
        operating_seconds=stats["operating_seconds"],
        http_429=stats["http_429"],
        batch_errors=stats["batch_errors"],
        http_503=stats["http_503"],
        max_concurrent=stats["max_concurrent_requests"],
        max_per_second=stats["max_requests_per_second"],
        # From the portal's first request to its last: wall minus this is the client's own head and tail.
        request_span=(stats["last_request_at"] or 0) - (stats["first_request_at"] or 0),
        idle_seconds=_idle_seconds(stats["per_second"]),
        rows_ok=result["rows"] == n and result["unique_ids"] == n,
    )
    if variant.client.startswith("leads_function"):
        result["lambda_peak_rss_kb"] = bench.worker_peak_rss_kb("LeadsFunction")
    return result


def run(bench: BenchStack, section: Section, runs: int, *, n: int = N, judge: bool = True) -> None:
    """Every latency: ours (auto parts), the raw lister with that many chains, b24pysdk; fast_bitrix24 once."""
    emulator = bench.emulator
    token = emulator.issue_tokens()["access_token"]
    bench.reset_portal()
    bench.warm("LeadsFunction", {"member_id": bench.member_id, "limit": 2_000}, MAX_PARTS)
    emulator.seed_leads(n, seed=1)
    # One discarded export each: the workers' first parallel read (thread pools, the split path) and
    # the caller's first use of them are first-use costs, not the steady state being compared.
    measure(bench, AUTO, n, token)
    measure(bench, RAW, n, token, workers=MAX_PARTS)
    measure(bench, RAW_SHARED, n, token, workers=MAX_PARTS, **_shared_pacing(bench))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for latency in LATENCIES:
        emulator.configure(latency_seconds=latency)
        per: dict[str, list[dict[str, Any]]] = {AUTO.key: [], RAW.key: [], RAW_SHARED.key: [], B24.key: []}
        for _ in range(runs):
            ours = measure(bench, AUTO, n, token)
            parts = max(1, int(ours.get("parts") or 1))
            raw = measure(bench, RAW, n, token, workers=parts)
            shared = measure(bench, RAW_SHARED, n, token, workers=parts, **_shared_pacing(bench))
            peer = measure(bench, B24, n, token)
            raw["chains"] = shared["chains"] = parts
            for key, result in zip(per, (ours, raw, shared, peer), strict=True):
                per[key].append(result)
        if latency == LATENCIES[0]:
            per[FB_ON.key] = [measure(bench, FB_ON, n, token)]
            per[FB_OFF.key] = [measure(bench, FB_OFF, n, token)]
        results[f"{latency * 1000:.0f}"] = per
    emulator.configure(latency_seconds=LATENCIES[0])
    bench.reset_portal()
    section.data["results"] = results
    _tabulate(section, results, n, judge=judge)


def _shared_pacing(bench: BenchStack) -> dict[str, Any]:
    """Job keys that make the raw lister pace through LeadsFunction's DynamoDB bucket (same portal key)."""
    return {
        "pacing_table": bench.table("RateLimitTable"),
        "env": {
            "AWS_ENDPOINT_URL": bench.stack.aws_endpoint_url,
            "AWS_DEFAULT_REGION": bench.stack.aws_region,
        },
    }


def _ratio(runs: list[dict[str, Any]], base: list[dict[str, Any]]) -> float:
    return median(a["wall_seconds"] / b["wall_seconds"] for a, b in zip(runs, base, strict=True))


def _tabulate(
    section: Section, results: dict[str, dict[str, list[dict[str, Any]]]], n: int, *, judge: bool
) -> None:
    header = [
        "latency",
        "client",
        "parts / chains",
        "Lambda invocations",
        "REST requests",
        "COUNT pages",
        "modeled s",
        "429 / batch errors",
        "max concurrent",
        "wall s (median)",
        "wall ÷ b24pysdk",
        "peak RSS MB",
        "rows complete",
        "errors",
    ]
    labels = {v.key: v.label for v in (AUTO, RAW, RAW_SHARED, B24, FB_ON, FB_OFF)}
    rows: list[Sequence[Any]] = []
    for latency, per in results.items():
        base = per[B24.key]
        for key, runs in per.items():
            last = runs[-1]
            chains = "-"
            if key == AUTO.key:
                chains = str(last.get("parts"))
            elif key in (RAW.key, RAW_SHARED.key):
                chains = str(last.get("chains", "-"))
            errors = sorted({r["error"] for r in runs if r["error"]})
            batch = sum(sum(r["batch_errors"].values()) for r in runs) // len(runs)
            memory = f"{median(r['maxrss_kb'] for r in runs) / 1024:.0f}"
            if last.get("lambda_peak_rss_kb"):
                memory += f" (+ Lambda worker {last['lambda_peak_rss_kb'] / 1024:.0f})"
            ratio = (
                _ratio(runs, base)
                if len(runs) == len(base)
                else last["wall_seconds"] / median(b["wall_seconds"] for b in base)
            )
            rows.append(
                [
                    f"{latency} ms",
                    labels[key],
                    chains,
                    fmt(last.get("invocations")),
                    fmt(int(median(r["requests"] for r in runs))),
                    fmt(int(median(r["count_pages"] for r in runs))),
                    fmt(median(r["operating_seconds"] for r in runs)),
                    f"{int(median(r['http_429'] for r in runs))} / {batch}",
                    fmt(max(r["max_concurrent"] for r in runs)),
                    fmt(median(r["wall_seconds"] for r in runs)),
                    fmt(ratio),
                    memory,
                    fmt(all(r["rows_ok"] for r in runs)),
                    "; ".join(errors) or "0",
                ]
            )
    section.table(
        f"{n:,} leads at time scale 1.0 (medians; ratios are medians of per-run ratios)", header, rows
    )
    each: list[Sequence[Any]] = []
    for latency, per in results.items():
        for i, (ours, raw, shared, peer) in enumerate(
            zip(per[AUTO.key], per[RAW.key], per[RAW_SHARED.key], per[B24.key], strict=True), 1
        ):
            each.append(
                [
                    f"{latency} ms",
                    str(i),
                    f"{ours['load_average']:.2f}",
                    fmt(ours["wall_seconds"]),
                    fmt(raw["wall_seconds"]),
                    fmt(shared["wall_seconds"]),
                    fmt(peer["wall_seconds"]),
                    f"{ours['wall_seconds'] / peer['wall_seconds']:.3f}",
                    f"{ours['wall_seconds'] / raw['wall_seconds']:.2f}",
                    f"{ours['wall_seconds'] / shared['wall_seconds']:.2f}",
                ]
            )
    section.table(
        "Each run (load average = 1-minute load when ours started; the machine is shared)",
        [
            "latency",
            "run",
            "load average",
            "ours s",
            "raw s",
            "raw, shared pacing s",
            "b24pysdk s",
            "ours ÷ b24pysdk",
            "overhead ÷ raw",
            "overhead ÷ raw, shared pacing",
        ],
        each,
    )
    usage: list[Sequence[Any]] = []
    for latency, per in results.items():
        for r in per[AUTO.key]:
            if "total_invoke_seconds" in r:
                usage.append(
                    [
                        f"{latency} ms",
                        fmt(r.get("invocations")),
                        fmt(r["total_invoke_seconds"]),
                        fmt(r.get("lambda_cpu_seconds")),
                        fmt(r["requests"]),
                        f"{r['total_invoke_seconds'] * 1.0:.1f}",
                    ]
                )
    if usage:
        section.table(
            "LeadsFunction resources per export (each run; cost inputs for docs/performance.md)",
            [
                "latency",
                "invocations",
                "sum of invocation seconds (client-side)",
                "worker CPU s",
                "REST requests",
                "GB-s at 1024 MB",
            ],
            usage,
        )
    if judge:  # the targets are set for 100,000 leads; a smoke run only shows the figures
        for latency, per in results.items():
            _checks(section, per, latency, n)


def _checks(section: Section, per: dict[str, list[dict[str, Any]]], latency: str, n: int) -> None:
    ours, raw, shared, b24 = per[AUTO.key], per[RAW.key], per[RAW_SHARED.key], per[B24.key]
    last = ours[-1]
    parts = int(last.get("parts") or 0)
    tag = f"realistic {latency} ms"
    judged = latency == f"{LATENCIES[0] * 1000:.0f}"  # the targets are set at 50 ms; 150 ms is reported
    ratio = _ratio(ours, b24)
    section.check(
        f"{tag}: LeadsFunction export wall ÷ b24pysdk",
        f"{ratio:.3f}x ({median(r['wall_seconds'] for r in ours):.2f} s vs "
        f"{median(r['wall_seconds'] for r in b24):.2f} s)",
        "≤ 0.15x" if judged else "reported",
        ratio <= 0.15 or not judged,
    )
    allowed = math.ceil(n / 2500) + parts
    requests = max(r["requests"] for r in ours)
    section.check(
        f"{tag}: LeadsFunction REST requests",
        f"{requests} ({parts} parts)",
        f"≤ ceil(N/2500) + parts = {allowed}",
        requests <= allowed,
    )
    section.check(
        f"{tag}: LeadsFunction COUNT pages / errors / rows complete",
        f"{max(r['count_pages'] for r in ours)} / {sum(1 for r in ours if r['error'])} / "
        f"{fmt(all(r['rows_ok'] for r in ours))}",
        "0 / 0 / yes",
        all(r["count_pages"] == 0 and not r["error"] and r["rows_ok"] and r["http_503"] == 0 for r in ours),
    )
    concurrent = max(r["max_concurrent"] for r in ours)
    section.check(
        f"{tag}: LeadsFunction max concurrent requests at the portal",
        str(concurrent),
        f"≤ burst {BURST}",
        concurrent <= BURST and all(r["http_429"] == 0 for r in ours),
    )
    overhead = _ratio(ours, raw)
    # The target is as the issue states it: against the raw lister as a library caller runs it (paced
    # in its own process). The same lister paced through the shared bucket is shown beside it, so the
    # share of the overhead that is shared pacing (not LeadsFunction itself) is visible.
    section.check(
        f"{tag}: LeadsFunction overhead (wall ÷ raw lister with {parts} chains)",
        f"{overhead:.2f}x ({median(r['wall_seconds'] for r in ours):.2f} s vs "
        f"{median(r['wall_seconds'] for r in raw):.2f} s); ÷ the raw lister paced through the same "
        f"DynamoDB bucket: {_ratio(ours, shared):.2f}x ({median(r['wall_seconds'] for r in shared):.2f} s)",
        "≤ 1.1x",
        overhead <= 1.1,
    )
