"""Section 2: fresh-process import time of every handler module, as a ratio to `import boto3`."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from tests.bench.common import REPO_ROOT, Section, child_env, fmt, median

HANDLERS = ("authorize", "callback", "install", "refresh_sweep", "refresh_worker", "leads", "token_rescue")
BASELINE = "boto3"
_TIMER = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
# What the handlers leave for the first invocation that talks to Bitrix24 (requests and our HTTP clients).
DEFERRED = "b24connector.bitrix24.rest, b24connector.bitrix24.oauth"
_DEFERRED_TIMER = (
    "import time, {module}; t = time.perf_counter(); import " + DEFERRED + "; print(time.perf_counter() - t)"
)
# Which handlers' first invocation loads DEFERRED (from the code: who builds an OAuth or REST client).
LOADS_ON_FIRST_USE = {
    "authorize": "yes (the flow holds the OAuth client)",
    "callback": "yes (code exchange)",
    "install": "yes (app.info)",
    "refresh_sweep": "never",
    "refresh_worker": "yes (token refresh)",
    "leads": "yes (REST calls)",
    "token_rescue": "only if a refresh is needed; a rescue never refreshes",
}
_IMPORTTIME = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def _env() -> dict[str, str]:
    # As a Lambda worker sees it: only the function's code on PYTHONPATH (-P keeps the cwd off sys.path).
    env = child_env({"PYTHONPATH": str(REPO_ROOT / "functions")})
    env.update(
        AWS_LAMBDA_FUNCTION_NAME="bench",
        POWERTOOLS_SERVICE_NAME="bench",
        POWERTOOLS_METRICS_NAMESPACE="Bench",
        POWERTOOLS_TRACE_DISABLED="true",
    )
    return env


def _import_seconds(module: str, env: dict[str, str], timer: str = _TIMER) -> float:
    completed = subprocess.run(
        [sys.executable, "-P", "-c", timer.format(module=module)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(completed.stdout.strip().splitlines()[-1])


def top_imports(module: str, env: dict[str, str], count: int = 6) -> list[tuple[str, float]]:
    """The packages imported directly by `module`'s import that took the longest (cumulative ms)."""
    completed = subprocess.run(
        [sys.executable, "-P", "-X", "importtime", "-c", f"import {module}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    entries: list[tuple[int, str, float]] = []
    for line in completed.stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match:
            entries.append((len(match.group(3)), match.group(4), int(match.group(2)) / 1000))
    # Third-party and first-party packages (no dots), at any depth: what the handler pulls in.
    best: dict[str, float] = {}
    for _depth, name, cumulative in entries:
        root = name.split(".")[0]
        if name == root and root not in {"encodings", "site"}:
            best[root] = max(best.get(root, 0.0), cumulative)
    ranked = sorted(best.items(), key=lambda item: item[1], reverse=True)
    return [(name, ms) for name, ms in ranked if name != module.split(".", maxsplit=1)[0]][:count]


def run(section: Section, runs: int, *, top: bool = True) -> None:
    """Time every handler import `runs` times (interleaved with boto3), report medians and ratios."""
    env = _env()
    modules = [BASELINE, *(f"b24connector.handlers.{name}" for name in HANDLERS)]
    for module in modules:
        _import_seconds(module, env)  # compile .pyc files once; Lambda packages ship them or pay once
    times: dict[str, list[float]] = {m: [] for m in modules}
    deferred: dict[str, list[float]] = {m: [] for m in modules[1:]}
    for _ in range(max(runs, 1)):
        for module in modules:
            times[module].append(_import_seconds(module, env))
        for module in modules[1:]:
            deferred[module].append(_import_seconds(module, env, _DEFERRED_TIMER))
    base = median(times[BASELINE])
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"runs": runs, "seconds": times, "deferred_seconds": deferred}
    worst = 0.0
    for module in modules[1:]:
        seconds = median(times[module])
        ratio = seconds / base
        worst = max(worst, ratio)
        tops = top_imports(module, env) if top else []
        data.setdefault("top_imports", {})[module] = tops
        name = module.rsplit(".", 1)[-1]
        rows.append(
            [
                module,
                fmt(seconds * 1000, 0),
                fmt(ratio),
                f"{median(deferred[module]) * 1000:.0f} ms; {LOADS_ON_FIRST_USE.get(name, '?')}",
                ", ".join(f"{name} {ms:.0f}" for name, ms in tops[:5]),
            ]
        )
        section.check(
            f"cold start: {module.rsplit('.', 1)[-1]} import ÷ boto3",
            f"{ratio:.2f}x ({seconds * 1000:.0f} ms vs {base * 1000:.0f} ms)",
            "≤ 1.5x",
            ratio <= 1.5,
        )
    section.intro = (
        f"Fresh `python -P` per import (PYTHONPATH = functions/ only, as a Lambda worker has it), "
        f"median of {runs} run(s), interleaved with `import boto3` = {base * 1000:.0f} ms (median); "
        "bytecode compiled beforehand. Top imports from `-X importtime` (cumulative ms, one run). The "
        "handlers import our REST/OAuth clients (and with them `requests`) only where they are wired; "
        "'left for first use' times importing them after the handler, i.e. what a first invocation "
        "that needs them adds (a shift, not a saving, for those handlers)."
    )
    section.table(
        "Handler import time",
        [
            "handler module",
            "import ms (median)",
            "÷ import boto3",
            "left for first use: REST/OAuth clients + requests (ms); loaded by the first invocation?",
            "top imports (cumulative ms)",
        ],
        rows,
    )
    section.data.update(data, boto3_seconds=base, worst_ratio=worst)
