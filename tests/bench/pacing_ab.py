"""A/B of the realistic export's pacing: `python -m tests.bench.pacing_ab [runs] [latency_ms]` (not in make bench).

In one stack, interleaved (ABBA order, so drift in the machine's load falls on both sides alike):
- LeadsFunction `fetch_leads()` pacing through the shared DynamoDB bucket (RATE_LIMIT_SHARED=true, as
  deployed) and through a per-invocation local bucket (RATE_LIMIT_SHARED=false);
- the raw FastLister in the caller's process with as many chains as the parts, paced by a local
  bucket (what the `realistic` section compares with) and by the same DynamoDB bucket as LeadsFunction.
Switching LeadsFunction's pacing restarts its warm workers with the other environment and warms them.
Prints one line per export (wall, the portal's busy span, max concurrent, pacing writes) and the
ratios inside each repetition, with the load average beside each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench import realistic
from tests.bench.common import FAKE_AWS, cpu_seconds, median
from tests.bench.stack import BenchStack, bench_stack


def _set_leads(bench: BenchStack, *, shared: bool, code_dir: Path | None) -> None:
    """Restart LeadsFunction's idle workers with this pacing (and code), then warm as many as the parts."""
    runtime = bench.stack.runtimes["LeadsFunction"]
    with runtime._cond:
        idle, runtime._idle = runtime._idle, []
        for worker in idle:
            runtime._all.discard(worker)
        runtime._count -= len(idle)
        environment = {**runtime.spec.environment, "RATE_LIMIT_SHARED": "true" if shared else "false"}
        runtime.spec = dataclasses.replace(
            runtime.spec, environment=environment, code_dir=code_dir or _CODE_DIRS[0]
        )
    for worker in idle:
        worker.stop()
    bench.warm("LeadsFunction", {"member_id": bench.member_id, "limit": 2_000}, realistic.MAX_PARTS)


_CODE_DIRS: list[Path] = []


@dataclasses.dataclass(frozen=True)
class _Variant:
    name: str
    kind: str  # leads | raw
    shared: bool  # pacing through the DynamoDB bucket
    before: bool = False  # LeadsFunction on the code given with --before


VARIANTS = {
    v.name: v
    for v in (
        _Variant("leads-dynamo", "leads", True),
        _Variant("leads-local", "leads", False),
        _Variant("leads-before", "leads", True, before=True),
        _Variant("raw-local", "raw", False),
        _Variant("raw-dynamo", "raw", True),
    )
}


class _HandleTimer:
    """Time the emulator spends inside RestEngine.handle (it holds the portal's one lock meanwhile)."""

    def __init__(self, bench: BenchStack) -> None:
        engine = bench.emulator._portal_app.engine
        inner = engine.handle
        self.seconds = 0.0
        self.cpu = 0.0
        self.calls = 0

        def handle(*args: Any, **kwargs: Any) -> Any:
            began, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began  # under the portal lock: no race
                self.cpu += time.thread_time() - cpu
                self.calls += 1

        engine.handle = handle


def _cpu(bench: BenchStack) -> dict[str, float]:
    moto = bench.stack._moto
    return {
        "bench_process": time.process_time(),
        "moto": (cpu_seconds(moto.pid) or 0.0) if moto is not None else 0.0,
    }


def main() -> int:
    """Run the A/B and print it."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pacing_ab")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=realistic.LATENCIES[0] * 1000)
    parser.add_argument("--variants", default="leads-dynamo,raw-local,raw-dynamo,leads-local")
    parser.add_argument("--before", type=Path, help="a functions/ directory of the code to compare with")
    args = parser.parse_args()
    chosen = [VARIANTS[name] for name in args.variants.split(",")]
    settings = {**realistic.SETTINGS, "latency_seconds": args.latency_ms / 1000}
    n = realistic.N
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(name, None)
    os.environ.update(FAKE_AWS)
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-central-1")
    with bench_stack(leads=n, workers=realistic.MAX_PARTS + 1, emulator_settings=settings) as bench:
        _CODE_DIRS.append(bench.stack.runtimes["LeadsFunction"].spec.code_dir)
        emulator = bench.emulator
        token = emulator.issue_tokens()["access_token"]
        bench.reset_portal()
        emulator.seed_leads(n, seed=1)
        env = {"AWS_ENDPOINT_URL": bench.stack.aws_endpoint_url, "AWS_DEFAULT_REGION": bench.stack.aws_region}
        shared_raw = {"pacing_table": bench.table("RateLimitTable"), "env": env}
        state: dict[str, Any] = {"leads": None}

        def run(variant: _Variant) -> dict[str, Any]:
            if variant.kind == "raw":
                extra: dict[str, Any] = {"workers": realistic.MAX_PARTS}
                if variant.shared:
                    extra.update(shared_raw)
                return realistic.measure(bench, realistic.RAW, n, token, **extra)
            setup = (variant.shared, variant.before)
            if state["leads"] != setup:
                _set_leads(bench, shared=variant.shared, code_dir=args.before if variant.before else None)
                state["leads"] = setup
            return realistic.measure(bench, realistic.AUTO, n, token)

        timer = _HandleTimer(bench)
        for variant in chosen:  # discarded: first use of each setup
            run(variant)
        rows: list[dict[str, Any]] = []
        for rep in range(args.runs):
            seq = chosen if rep % 2 == 0 else list(reversed(chosen))
            per: dict[str, dict[str, Any]] = {}
            for variant in seq:
                if variant.kind == "leads" and state["leads"] != (variant.shared, variant.before):
                    _set_leads(bench, shared=variant.shared, code_dir=args.before if variant.before else None)
                    state["leads"] = (variant.shared, variant.before)
                load = os.getloadavg()[0]
                cpu_before, handle_before, calls_before = _cpu(bench), timer.seconds, timer.calls
                handle_cpu_before = timer.cpu
                result = run(variant)
                cpu_after = _cpu(bench)
                per[variant.name] = result
                line = {
                    "rep": rep,
                    "variant": variant.name,
                    "load": round(load, 2),
                    "wall": round(result["wall_seconds"], 3),
                    "span": round(result["request_span"], 3),
                    "requests": result["requests"],
                    "max_concurrent": result["max_concurrent"],
                    "http_503": result["http_503"],
                    "rows_ok": result["rows_ok"],
                    "error": result["error"],
                    "workers_cpu": round(result.get("lambda_cpu_seconds", 0.0), 2),
                    "caller_cpu": round(result.get("cpu_seconds", 0.0), 2),
                    "bench_cpu": round(cpu_after["bench_process"] - cpu_before["bench_process"], 2),
                    "moto_cpu": round(cpu_after["moto"] - cpu_before["moto"], 2),
                    "handle_s": round(timer.seconds - handle_before, 3),
                    "handle_cpu": round(timer.cpu - handle_cpu_before, 3),
                    "handle_calls": timer.calls - calls_before,
                }
                rows.append(line)
                print(json.dumps(line), flush=True)
            names = [v.name for v in chosen]
            ratios = {
                f"{a} / {b}": round(per[a]["wall_seconds"] / per[b]["wall_seconds"], 3)
                for a in names
                for b in names
                if a != b and (a.startswith("leads") or b.startswith("raw"))
            }
            print(json.dumps({"rep": rep, **ratios}), flush=True)
        for variant in chosen:
            walls = [r["wall"] for r in rows if r["variant"] == variant.name]
            print(f"{variant.name}: median wall {median(walls):.3f} s over {walls}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
