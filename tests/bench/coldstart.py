"""Section 2: fresh-process import time of every handler, as Lambda runs it, as a ratio to `import boto3`.

Primary: each function's `make build` artifact (.aws-sam/build/<Function>), read-only, no bytecode
written (tests/bench/artifact.py), against `import boto3` precompiled from the same artifact with the
same interpreter and flags. Secondary: the dev tree (functions/ on PYTHONPATH, the virtualenv's
site-packages) against the virtualenv's `import boto3`, as this section measured before the artifact
shipped bytecode.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from tests.bench import artifact
from tests.bench.common import REPO_ROOT, Section, child_env, fmt, median

BASELINE = "boto3"
TARGET = 1.3
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


def _import_seconds(
    module: str, env: dict[str, str], timer: str = _TIMER, flags: tuple[str, ...] = ("-P",)
) -> float:
    completed = subprocess.run(
        [sys.executable, *flags, "-c", timer.format(module=module)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(completed.stdout.strip().splitlines()[-1])


def top_imports(
    module: str, env: dict[str, str], count: int = 6, flags: tuple[str, ...] = ("-P",)
) -> list[tuple[str, float]]:
    """The packages imported directly by `module`'s import that took the longest (cumulative ms)."""
    completed = subprocess.run(
        [sys.executable, *flags, "-X", "importtime", "-c", f"import {module}"],
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
    """Both views: the as-built artifact (checked against TARGET) and the dev tree (for comparison)."""
    runs = max(runs, 1)
    provenance = artifact.ensure_build()
    functions = artifact.built_functions()
    worst = _as_built(section, functions, runs, top=top)
    dev = _dev_tree(section, [f.module for f in functions], runs)
    section.intro = (
        f"Fresh `python {' '.join(artifact.LAMBDA_FLAGS)}` per import, median of {runs} run(s), interleaved. "
        f"**As built** (the target): each function's artifact from {provenance}, copied read-only, "
        "PYTHONPATH = that copy only, PYTHONDONTWRITEBYTECODE=1 (Lambda's /var/task is read-only, so "
        "only bytecode shipped in the zip helps), `-S` (no site-packages of this machine: the "
        "artifact vendors boto3, see docs/decisions/0003-vendor-boto3.md); the ratio is to "
        "`import boto3` from the same read-only artifact (its shipped unchecked-hash .pyc), same flags. "
        "The target is checked on the import's CPU time inside the process (`time.process_time`), "
        "which other load on a shared machine disturbs least; wall time is shown beside it. "
        "The 'no bytecode' row is the same LeadsFunction artifact without its __pycache__ directories, "
        "i.e. what `sam build` alone produces. **Dev tree** (secondary): `python -P`, PYTHONPATH = "
        "functions/, the virtualenv's site-packages and timestamp .pyc, against the virtualenv's "
        "`import boto3` (at most 3 runs); 'left for first use' (one run) times importing our REST/OAuth clients (and requests) "
        "after the handler, what a first invocation that needs them adds. Top imports from "
        "`-X importtime` on the as-built copy (cumulative ms, one run)."
    )
    section.data.update(worst_ratio=worst, dev_tree=dev, artifact_provenance=provenance)


_CPU_AND_WALL = (
    "import time; c = time.process_time(); t = time.perf_counter(); import {module}; "
    "print(time.process_time() - c, time.perf_counter() - t)"
)


def _cpu_and_wall(module: str, env: dict[str, str]) -> tuple[float, float]:
    completed = subprocess.run(
        [sys.executable, *artifact.LAMBDA_FLAGS, "-c", _CPU_AND_WALL.format(module=module)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cpu, wall = completed.stdout.split()
    return float(cpu), float(wall)


def _as_built(section: Section, functions: list[artifact.BuiltFunction], runs: int, *, top: bool) -> float:
    """Time every function's handler import from its read-only artifact; check each CPU-time ratio."""
    bare = next((f for f in functions if f.module.endswith(".leads")), functions[0])
    with artifact.read_only_copies(functions, bare) as copies:
        envs = {f.logical_id: artifact.lambda_env(copies.functions[f.logical_id]) for f in functions}
        base_env = envs[bare.logical_id]
        bare_env = artifact.lambda_env(copies.without_bytecode)
        samples: dict[str, list[tuple[float, float]]] = {f.logical_id: [] for f in functions}
        base_samples: list[tuple[float, float]] = []
        bare_samples: list[tuple[float, float]] = []
        for _ in range(runs):
            base_samples.append(_cpu_and_wall(BASELINE, base_env))
            for function in functions:
                samples[function.logical_id].append(_cpu_and_wall(function.module, envs[function.logical_id]))
            bare_samples.append(_cpu_and_wall(bare.module, bare_env))
        tops = {
            f.logical_id: top_imports(f.module, envs[f.logical_id], flags=artifact.LAMBDA_FLAGS)
            if top
            else []
            for f in functions
        }
        written = copies.files_now() - copies.files_before

    def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
        return median(p[0] for p in pairs), median(p[1] for p in pairs)

    base_cpu, base_wall = medians(base_samples)
    rows: list[list[Any]] = []
    worst = 0.0
    for function in functions:
        cpu, wall = medians(samples[function.logical_id])
        ratio = cpu / base_cpu
        worst = max(worst, ratio)
        rows.append(
            [
                function.logical_id,
                function.module,
                fmt(cpu * 1000, 0),
                fmt(ratio),
                fmt(wall * 1000, 0),
                fmt(wall / base_wall),
                ", ".join(f"{name} {ms:.0f}" for name, ms in tops[function.logical_id][:5]),
            ]
        )
        section.check(
            f"cold start as built: {function.logical_id} import ÷ boto3 (CPU)",
            f"{ratio:.2f}x ({cpu * 1000:.0f} ms vs {base_cpu * 1000:.0f} ms; wall {wall / base_wall:.2f}x)",
            f"≤ {TARGET}x",
            ratio <= TARGET,
        )
    bare_cpu, bare_wall = medians(bare_samples)
    rows.append(
        [
            f"{bare.logical_id}, no bytecode (sam build alone)",
            bare.module,
            fmt(bare_cpu * 1000, 0),
            fmt(bare_cpu / base_cpu),
            fmt(bare_wall * 1000, 0),
            fmt(bare_wall / base_wall),
            "",
        ]
    )
    section.check(
        "cold start as built: nothing written into the read-only artifact",
        f"{written} new files",
        "0",
        written == 0,
    )
    section.table(
        f"As built (read-only artifact; import boto3 from it = {base_cpu * 1000:.0f} ms CPU, "
        f"{base_wall * 1000:.0f} ms wall, medians)",
        [
            "function",
            "handler module",
            "import CPU ms",
            "÷ boto3 (CPU)",
            "import wall ms",
            "÷ boto3 (wall)",
            "top imports (cumulative ms)",
        ],
        rows,
    )
    section.data.update(
        runs=runs,
        boto3_cpu_seconds=base_cpu,
        boto3_wall_seconds=base_wall,
        as_built_cpu_wall_seconds=samples,
        as_built_boto3_cpu_wall_seconds=base_samples,
        no_bytecode_cpu_wall_seconds=bare_samples,
        top_imports={f.logical_id: tops[f.logical_id] for f in functions},
    )
    return worst


def _dev_tree(section: Section, modules: list[str], runs: int) -> dict[str, Any]:
    """The dev tree's figures (secondary row): handler imports with the virtualenv's bytecode."""
    env = _env()
    every = [BASELINE, *modules]
    for module in every:
        _import_seconds(module, env)  # the virtualenv and functions/ get their timestamp .pyc once
    times: dict[str, list[float]] = {m: [] for m in every}
    deferred: dict[str, list[float]] = {m: [] for m in modules}
    # Secondary figures: at most 3 runs, 'left for first use' once, so `--only coldstart` stays short.
    for run_index in range(min(runs, 3)):
        for module in every:
            times[module].append(_import_seconds(module, env))
        for module in modules if run_index == 0 else ():
            deferred[module].append(_import_seconds(module, env, _DEFERRED_TIMER))
    base = median(times[BASELINE])
    rows: list[list[Any]] = []
    for module in modules:
        seconds = median(times[module])
        name = module.rsplit(".", 1)[-1]
        rows.append(
            [
                module,
                fmt(seconds * 1000, 0),
                fmt(seconds / base),
                f"{median(deferred[module]) * 1000:.0f} ms; {LOADS_ON_FIRST_USE.get(name, '?')}",
            ]
        )
    section.table(
        f"Dev tree, secondary (functions/ + the virtualenv; its import boto3 = {base * 1000:.0f} ms, median)",
        [
            "handler module",
            "import ms (median)",
            "÷ import boto3",
            "left for first use: REST/OAuth clients + requests (ms); loaded by the first invocation?",
        ],
        rows,
    )
    return {"boto3_seconds": base, "seconds": times, "deferred_seconds": deferred}
