"""Section 5: many concurrent LeadsFunction invocations on one portal stay inside its request budget."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from tests.bench.common import SELECT, Section, fmt
from tests.bench.stack import EXPORT_EMULATOR, BenchStack, bench_stack

RATE, BURST = 2.0, 50
LEADS = 100_000
# Above LeadsFunction's parallel threshold (5,000), so every invocation runs its ID windows on threads.
LIMIT = 5_100


def _wave(bench: BenchStack, invocations: int) -> dict[str, Any]:
    """Fire `invocations` concurrent LeadsFunction calls on disjoint ID ranges; what came back."""
    answers: list[dict[str, Any]] = [{} for _ in range(invocations)]
    client = bench.lambda_client()
    start = threading.Barrier(invocations)

    def call(index: int) -> None:
        payload = {
            "member_id": bench.member_id,
            "select": SELECT,
            "filter": {">ID": index * (LEADS // invocations)},
            "limit": LIMIT,
        }
        start.wait()
        began = time.perf_counter()
        response = client.invoke(FunctionName="LeadsFunction", Payload=json.dumps(payload).encode())
        body = json.loads(response["Payload"].read())
        answers[index] = {
            "seconds": time.perf_counter() - began,
            "function_error": response.get("FunctionError"),
            "error": (body.get("error") or {}).get("code") if isinstance(body, dict) else "not an object",
            "leads": len(body.get("leads") or []) if isinstance(body, dict) else 0,
        }

    threads = [threading.Thread(target=call, args=(i,)) for i in range(invocations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"answers": answers}


def _measure(bench: BenchStack, invocations: int) -> dict[str, Any]:
    # Warm every worker first (Lambda would have warm instances too), then start from a full bucket.
    bench.reset_portal()
    warmers = [
        threading.Thread(
            target=bench.invoke, args=("LeadsFunction", {"member_id": bench.member_id, "limit": 1})
        )
        for _ in range(invocations)
    ]
    for thread in warmers:
        thread.start()
    for thread in warmers:
        thread.join()
    bench.reset_portal()
    began = time.perf_counter()
    wave = _wave(bench, invocations)
    wall = time.perf_counter() - began
    stats = bench.emulator.stats()
    duration = (stats["last_request_at"] or 0) - (stats["first_request_at"] or 0)
    requests = stats["requests"]
    answers = wave["answers"]
    errors = [a["error"] for a in answers if a["error"] or a["function_error"]]
    return {
        "invocations": invocations,
        "wall_seconds": wall,
        "requests": requests,
        "http_503": stats["http_503"],
        "http_429": stats["http_429"],
        "max_concurrent_requests": stats["max_concurrent_requests"],
        "duration_seconds": duration,
        "errors_returned": errors,
        "rate_limited_returned": sum(1 for e in errors if e == "RATE_LIMITED"),
        "leads": sum(a["leads"] for a in answers),
        "short_pages": sum(1 for a in answers if a["leads"] < LIMIT),
        "expected_leads": invocations * LIMIT,
        "utilization": requests / (BURST + RATE * duration) if duration > 0 else float("nan"),
        "sustained_rate": (requests - BURST) / duration
        if duration > 0 and requests > BURST
        else float("nan"),
        "slowest_invocation_seconds": max(a["seconds"] for a in answers),
    }


def run(section: Section, invocations: int, *, compare_local: bool = True) -> None:
    """The concurrent wave with the shared bucket (and, for contrast, with per-process buckets)."""
    results: dict[str, dict[str, Any]] = {}
    variants = [("shared", {})]
    if compare_local:
        variants.append(("per-process", {"RATE_LIMIT_SHARED": "false"}))
    for name, env in variants:
        with bench_stack(
            leads=LEADS,
            workers=invocations,
            emulator_settings=EXPORT_EMULATOR,
            env_overrides=env,
        ) as bench:
            results[name] = _measure(bench, invocations)
    section.data.update(results)
    section.intro = (
        f"{invocations} LeadsFunction invocations released together on one portal (2 req/s, bucket 50, "
        f"50 ms latency), each reading {LIMIT:,} leads of its own ID range ({LEADS:,} seeded), every "
        "worker warm. 'shared' = DynamoTokenBucket in the RateLimitTable (the default); 'per-process' = "
        "RATE_LIMIT_SHARED=false, each worker pacing only itself. (The local stack serialises moto's "
        "DynamoDB calls, so conditional writes are atomic as in AWS.) Utilisation = requests ÷ (50 + 2/s x "
        "the span from the first to the last request the portal saw); sustained = (requests - 50) ÷ span."
    )
    header = [
        "pacing",
        "REST requests",
        "503 at the portal",
        "errors returned (RATE_LIMITED)",
        "leads returned (short pages)",
        "span s",
        "utilisation",
        "sustained req/s",
        "slowest invocation s",
    ]
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name,
                fmt(r["requests"]),
                fmt(r["http_503"]),
                f"{len(r['errors_returned'])} ({r['rate_limited_returned']})",
                f"{r['leads']:,} / {r['expected_leads']:,} ({r['short_pages']})",
                fmt(r["duration_seconds"]),
                f"{r['utilization']:.0%}",
                fmt(r["sustained_rate"]),
                fmt(r["slowest_invocation_seconds"]),
            ]
        )
    section.table("Concurrent invocations on one portal", header, rows)
    shared = results["shared"]
    section.check(
        "pacing: QUERY_LIMIT_EXCEEDED returned to callers",
        f"{shared['rate_limited_returned']} (503s at the portal: {shared['http_503']})",
        "0",
        shared["rate_limited_returned"] == 0 and not shared["errors_returned"],
    )
    if shared["requests"] <= BURST:
        section.notes.append(
            "Too few requests to exhaust the portal's bucket: utilisation not judged (smoke)."
        )
        return
    section.check(
        "pacing: share of the portal's 2 req/s used",
        f"{shared['utilization']:.0%} (sustained {shared['sustained_rate']:.2f} req/s)",
        "≥ 80%",
        shared["utilization"] >= 0.8,
    )
