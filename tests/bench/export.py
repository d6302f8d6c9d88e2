"""Section 1: a whole lead export, ours against fast_bitrix24 and b24pysdk, on the same emulated portal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tests.bench.common import SELECT, Section, fmt, median, run_child
from tests.bench.stack import BenchStack

CHAINS = 4  # parallel ID-window chains of our lister (FastLister's default, as LeadsFunction uses it)
PAGE_LIMIT = 20_000  # LeadsFunction's largest page (leads.MAX_LIMIT): fewest invocations per export
RATE, BURST = 2.0, 50  # the portal's published standard plan, for every client
# fetch_leads(parallel=PARALLEL): ID-range parts read on that many concurrent LeadsFunction invocations.
# 5 = 100,000 leads / 20,000 per invocation: each part is one invocation.
PARALLEL = 5


@dataclass(frozen=True)
class Variant:
    """One client run with one operating-limit setting."""

    key: str
    client: str
    label: str
    operating_limit: float

    @property
    def ours(self) -> bool:
        """One of our clients."""
        return self.client in {
            "leads_function",
            "leads_function_parallel",
            "ours_parallel",
            "ours_sequential",
        }


VARIANTS = (
    Variant(
        "leads_function_parallel",
        "leads_function_parallel",
        f"ours: LeadsFunction, fetch_leads(parallel={PARALLEL}) over Lambda Invoke",
        480.0,
    ),
    Variant(
        "leads_function",
        "leads_function",
        "ours: LeadsFunction, fetch_leads(parallel=1) one invocation at a time",
        480.0,
    ),
    Variant("ours_parallel", "ours_parallel", f"ours: FastLister, {CHAINS} parallel ID-window chains", 480.0),
    Variant("ours_sequential", "ours_sequential", "ours: FastLister, one sequential chain", 480.0),
    Variant("fast_bitrix24_limit", "fast_bitrix24", "fast_bitrix24 get_all (480 s limit on)", 480.0),
    Variant("fast_bitrix24_off", "fast_bitrix24", "fast_bitrix24 get_all (limit off)", 0.0),
    Variant("b24pysdk_limit", "b24pysdk", "b24pysdk as_list_fast (480 s limit on)", 480.0),
    Variant("b24pysdk_off", "b24pysdk", "b24pysdk as_list_fast (limit off)", 0.0),
)


def _one(bench: BenchStack, variant: Variant, n: int, token: str) -> dict[str, Any]:
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
        "workers": CHAINS,
        "lambda_endpoint_url": bench.stack.lambda_endpoint_url,
        "region": bench.stack.aws_region,
        "member_id": bench.member_id,
        "page_limit": PAGE_LIMIT,
        "parallel": PARALLEL,
    }
    result = run_child("tests.bench.export_client", job, timeout=600)
    stats = emulator.stats()
    batch_blocked = int(stats["batch_errors"].get("OPERATION_TIME_LIMIT", 0))
    result.update(
        requests=stats["requests"],
        count_pages=stats["count_queries"],
        operating_seconds=stats["operating_seconds"],
        http_429=stats["http_429"],
        blocked_subcalls=batch_blocked,
        http_503=stats["http_503"],
        rows_ok=result["rows"] == n and result["unique_ids"] == n,
    )
    if variant.client.startswith("leads_function"):
        result["lambda_peak_rss_kb"] = bench.worker_peak_rss_kb("LeadsFunction")
    return result


def run(bench: BenchStack, section: Section, sizes: list[int], runs: int, *, smoke: bool = False) -> None:
    """Measure every variant `runs` times per size (interleaved), then tabulate medians and ratios.

    The targets are defined for N = 100,000 (where COUNT pages dominate fast_bitrix24's cost); a smoke
    run at a small N reports the same figures but does not judge them.
    """
    emulator = bench.emulator
    token = emulator.issue_tokens()["access_token"]
    # Warm LeadsFunction workers first, one per concurrent invocation: cold starts are section 2's business.
    bench.reset_portal()
    bench.warm("LeadsFunction", {"member_id": bench.member_id, "limit": 2_000}, PARALLEL)
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for n in sizes:
        emulator.seed_leads(n, seed=1)
        per_variant: dict[str, list[dict[str, Any]]] = {v.key: [] for v in VARIANTS}
        for attempt in range(runs):
            # Rotate the order so a noisy neighbour does not always hit the same client.
            order = VARIANTS[attempt % len(VARIANTS) :] + VARIANTS[: attempt % len(VARIANTS)]
            for variant in order:
                per_variant[variant.key].append(_one(bench, variant, n, token))
        results[n] = per_variant
    bench.reset_portal()
    section.data["runs"] = runs
    section.data["results"] = {str(n): v for n, v in results.items()}
    _tabulate(section, results, judge=not smoke)


def _ratio_median(runs: list[dict[str, Any]], base: list[dict[str, Any]]) -> float:
    """Median over runs of wall(ours, run i) / wall(peer, run i): ratios within one run, not across."""
    return median(a["wall_seconds"] / b["wall_seconds"] for a, b in zip(runs, base, strict=True))


def _tabulate(section: Section, results: dict[int, dict[str, list[dict[str, Any]]]], *, judge: bool) -> None:
    header = [
        "N",
        "client",
        "REST requests",
        "COUNT pages",
        "modeled s",
        "429 (HTTP / batch sub-calls)",
        "503",
        "wall s (median)",
        "wall ÷ fast_bitrix24 (off)",
        "wall ÷ b24pysdk (off)",
        "peak RSS MB",
        "rows complete",
        "errors",
    ]
    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for n, per_variant in results.items():
        fb_off, b24_off = per_variant["fast_bitrix24_off"], per_variant["b24pysdk_off"]
        for variant in VARIANTS:
            runs = per_variant[variant.key]
            last = runs[-1]
            wall = median(r["wall_seconds"] for r in runs)
            vs_fb = _ratio_median(runs, fb_off)
            vs_b24 = _ratio_median(runs, b24_off)
            rss = median(r["maxrss_kb"] for r in runs) / 1024
            memory = f"{rss:.0f}"
            if variant.client.startswith("leads_function") and last.get("lambda_peak_rss_kb"):
                memory += f" (+ Lambda worker {last['lambda_peak_rss_kb'] / 1024:.0f})"
            errors = sorted({r["error"] for r in runs if r["error"]})
            row = {
                "requests": int(median(r["requests"] for r in runs)),
                "count_pages": int(median(r["count_pages"] for r in runs)),
                "operating_seconds": median(r["operating_seconds"] for r in runs),
                "http_429": int(median(r["http_429"] for r in runs)),
                "blocked_subcalls": int(median(r["blocked_subcalls"] for r in runs)),
                "http_503": int(median(r["http_503"] for r in runs)),
                "wall_seconds": wall,
                "wall_vs_fast_bitrix24_off": vs_fb,
                "wall_vs_b24pysdk_off": vs_b24,
                "peak_rss_mb": rss,
                "rows_complete_all_runs": all(r["rows_ok"] for r in runs),
                "errors": errors,
            }
            summary.setdefault(str(n), {})[variant.key] = row
            rows.append(
                [
                    f"{n:,}",
                    variant.label,
                    fmt(row["requests"]),
                    fmt(row["count_pages"]),
                    fmt(row["operating_seconds"]),
                    f"{row['http_429']} / {row['blocked_subcalls']}",
                    fmt(row["http_503"]),
                    fmt(wall),
                    fmt(vs_fb),
                    fmt(vs_b24),
                    memory,
                    fmt(row["rows_complete_all_runs"]),
                    "; ".join(errors) or "0",
                ]
            )
    section.data["summary"] = summary
    section.table("Lead export (medians of the runs; ratios are medians of per-run ratios)", header, rows)
    if judge:
        _checks(section, summary)


def _checks(section: Section, summary: dict[str, Any]) -> None:
    n = max(int(k) for k in summary)
    at = summary[str(n)]
    b24, fb_off = at["b24pysdk_limit"], at["fast_bitrix24_off"]
    names = {
        "ours_parallel": "raw client",
        "leads_function_parallel": f"LeadsFunction export (parallel={PARALLEL})",
        "leads_function": "LeadsFunction, one invocation at a time",
    }
    for key, chains in (
        ("ours_parallel", CHAINS),
        ("leads_function_parallel", PARALLEL),
        ("leads_function", CHAINS),
    ):
        row = at[key]
        name = names[key]
        invocations = math.ceil(n / PAGE_LIMIT) if key == "leads_function" else 1
        allowed = math.ceil(n / 2500) + chains
        section.check(
            f"{name}: REST requests at N={n:,}",
            fmt(row["requests"]),
            f"≤ ceil(N/2500) + chains = {allowed}",
            row["requests"] <= allowed,
            f"{invocations} invocations of ≤ {PAGE_LIMIT:,} leads, each opening its own chains"
            if key == "leads_function"
            else (
                f"chains = the {PARALLEL} parts (invocations at once)"
                if key == "leads_function_parallel"
                else ""
            ),
        )
        section.check(f"{name}: COUNT pages", fmt(row["count_pages"]), "0", row["count_pages"] == 0)
        section.check(
            f"{name}: modeled operating s vs b24pysdk",
            f"{row['operating_seconds']:.2f} vs {b24['operating_seconds']:.2f}",
            "≤ 1.1x",
            row["operating_seconds"] <= 1.1 * b24["operating_seconds"],
        )
        section.check(
            f"{name}: modeled operating s vs fast_bitrix24",
            f"{row['operating_seconds']:.2f} vs {fb_off['operating_seconds']:.0f}",
            "≤ 1/100",
            row["operating_seconds"] * 100 <= fb_off["operating_seconds"],
        )
        section.check(
            f"{name}: wall vs fast_bitrix24 (limit off)",
            f"{row['wall_vs_fast_bitrix24_off']:.2f}x",
            "≤ 1.0x",
            row["wall_vs_fast_bitrix24_off"] <= 1.0,
        )
        section.check(
            f"{name}: wall vs b24pysdk (limit off)",
            f"{row['wall_vs_b24pysdk_off']:.2f}x",
            "≤ 0.4x",
            row["wall_vs_b24pysdk_off"] <= 0.4,
        )
        section.check(
            f"{name}: errors surfaced / rows complete",
            f"{len(row['errors'])} / {fmt(row['rows_complete_all_runs'])}",
            "0 / yes",
            not row["errors"] and row["rows_complete_all_runs"] and row["http_503"] == 0,
        )
