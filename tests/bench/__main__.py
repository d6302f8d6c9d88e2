"""`python -m tests.bench [--smoke] [--only export,coldstart,aws,refresh,pacing,realistic,events,million] [--runs N]`.

`million` runs only when named in --only (several minutes at the portal's real 2 requests/s).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.bench import report
from tests.bench.common import BENCH_DIR, FAKE_AWS, REPO_ROOT, Section, machine

FUNCTION_LOG = REPO_ROOT / ".local" / "bench" / "functions.log"


@dataclass(frozen=True)
class Plan:
    """How much of each section to run."""

    sizes: list[int]
    runs: int
    coldstart_runs: int
    portals: int
    due: int
    pacing_invocations: int
    smoke: bool = False


FULL = Plan(
    sizes=[1_000, 10_000, 100_000], runs=3, coldstart_runs=5, portals=20_000, due=1_000, pacing_invocations=20
)
SMOKE = Plan(sizes=[1_000], runs=1, coldstart_runs=1, portals=200, due=20, pacing_invocations=4, smoke=True)
SECTIONS = ("export", "coldstart", "aws", "refresh", "pacing", "realistic", "events")
# Run only when asked for with --only (minutes of wall time at the portal's real request rate).
OPT_IN = ("million",)


def _export(plan: Plan) -> Section:
    from tests.bench import export
    from tests.bench.stack import EXPORT_EMULATOR, bench_stack

    section = Section(
        "export",
        "1. Lead export against the emulator",
        "Same seeded leads (seed 1, 10% deleted IDs), same portal limits (2 req/s, bucket 50; 480 s "
        "operating limit per method unless 'limit off'), 50 ms latency per request, modeled server time "
        "applied as real delay at time scale 0.01. Every client runs in a fresh process and keeps all "
        "rows in memory; peak RSS is that process's VmHWM (the LeadsFunction line adds the Lambda "
        "worker's). Our clients pace through a token bucket of the same 2/50 (the LeadsFunction "
        "path through the shared DynamoDB bucket). LeadsFunction runs warm: one warm worker per "
        f"concurrent invocation ({export.PARALLEL}) before the first measurement; 20,000 leads per "
        "invocation.",
    )
    workers = export.PARALLEL + 1  # each concurrent invocation of the parallel export needs a worker
    with bench_stack(leads=max(plan.sizes), workers=workers, emulator_settings=EXPORT_EMULATOR) as bench:
        export.run(bench, section, plan.sizes, plan.runs, smoke=plan.smoke)
    return section


def _coldstart(plan: Plan) -> Section:
    from tests.bench import coldstart

    section = Section("coldstart", "2. Cold start (import time)")
    coldstart.run(section, plan.coldstart_runs, top=not plan.smoke)
    return section


def _aws(plan: Plan) -> Section:
    from tests.bench import aws_calls

    section = Section("aws", "3. AWS calls per invocation")
    aws_calls.run(section)
    return section


def _refresh(plan: Plan) -> Section:
    from tests.bench import refresh_scale

    section = Section("refresh", "4. Refresh at scale")
    refresh_scale.run(section, portals=plan.portals, due=plan.due)
    return section


def _pacing(plan: Plan) -> Section:
    from tests.bench import pacing

    section = Section("pacing", "5. Rate-limit discipline")
    pacing.run(section, invocations=plan.pacing_invocations, compare_local=not plan.smoke)
    return section


def _realistic(plan: Plan) -> Section:
    from tests.bench import realistic
    from tests.bench.stack import bench_stack

    section = Section(
        "realistic",
        "6. Realistic: 100,000 leads at the portal's real server time",
        "Same seeded leads (seed 1, 10% deleted IDs) and portal limits (2 req/s, bucket 50, 480 s operating "
        "limit), modeled server time applied in full (time scale 1.0), 50 ms latency per request (and a "
        "150 ms variant). Ours is fetch_leads() without `parallel`: its first LeadsFunction answer plans the "
        "parts, which run on that many concurrent warm invocations sharing the DynamoDB token bucket. "
        "The raw lister runs in the caller's process with as many ID-window chains as there were parts, "
        "paced in that process (as a library caller runs it: the overhead target) and, in a second row, "
        "through the same DynamoDB bucket as LeadsFunction (the overhead without the cost of shared pacing). "
        "One discarded export of each of ours runs first (first-use costs in the warm workers). "
        "fast_bitrix24 runs once, at 50 ms, stopped after "
        f"{realistic.PEER_TIMEOUT:.0f} s.",
    )
    n = 1_000 if plan.smoke else realistic.N
    with bench_stack(leads=n, workers=realistic.MAX_PARTS + 1, emulator_settings=realistic.SETTINGS) as bench:
        realistic.run(bench, section, min(plan.runs, 2), n=n, judge=not plan.smoke)
    return section


def _million(plan: Plan) -> Section:
    from tests.bench import million

    section = Section("million", "7. A million leads at the standard plan's 2 requests/s", million.INTRO)
    million.run(section, smoke=plan.smoke)
    return section


def _events(plan: Plan) -> Section:
    from tests.bench import events

    section = Section("events", "8. Lead events: a 10,000-lead import through the bus")
    events.run(section, smoke=plan.smoke)
    return section


RUNNERS: dict[str, Callable[[Plan], Section]] = {
    "events": _events,
    "realistic": _realistic,
    "million": _million,
    "export": _export,
    "coldstart": _coldstart,
    "aws": _aws,
    "refresh": _refresh,
    "pacing": _pacing,
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, write the results, print the tables (exit 1 on a miss with --strict)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small sizes, one run (about 30 seconds)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--runs", type=int, help="runs per export figure (default 3, smoke 1)")
    parser.add_argument("--no-write", action="store_true", help="print only; keep results.* as they are")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--verbose", action="store_true", help="function logs on the console, not in a file")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.runs:
        plan = Plan(**{**plan.__dict__, "runs": args.runs})
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS) - set(OPT_IN))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    logging.basicConfig(level=logging.WARNING)
    # Everything runs against loopback servers: never a real account, whatever the shell has set.
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(name, None)
    os.environ.update(FAKE_AWS)
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-central-1")
    meta = {"machine": machine(), "mode": "smoke" if args.smoke else "full", "runs": plan.runs}
    if not args.verbose:
        # The local stack's functions log to our stderr (as CloudWatch would collect them): keep them
        # out of the tables. Children inherit the descriptor, so their logs land in the file too.
        FUNCTION_LOG.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(FUNCTION_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 2)
        os.close(log)
        print(f"function logs: {FUNCTION_LOG}", flush=True)
    started = time.perf_counter()
    sections: list[Section] = []
    for name in chosen:
        began = time.perf_counter()
        print(f"== {name} ...", flush=True)
        section = RUNNERS[name](plan)
        section.seconds = time.perf_counter() - began
        sections.append(section)
    meta["seconds"] = time.perf_counter() - started
    print(report.console(sections))
    if not args.no_write:
        # A smoke or partial run (--only) must not replace the committed full results.
        partial = args.smoke or set(chosen) != set(SECTIONS)
        target = BENCH_DIR / ".tmp" if partial else BENCH_DIR
        target.mkdir(exist_ok=True)
        md_path, json_path = report.write(meta, sections, target)
        print(f"\nwrote {md_path} and {json_path} ({meta['seconds']:.0f} s)")
    missed = [c for s in sections for c in s.checks if not c.ok]
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
