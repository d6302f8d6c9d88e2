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
        "artifact vendors boto3, see docs/decisions/0001-vendor-boto3.md); the ratio is to "
        "`import boto3` from the same read-only artifact (its shipped unchecked-hash .pyc), same flags. "
        "The 'no bytecode' row is the same LeadsFunction artifact without its __pycache__ directories, "
        "i.e. what `sam build` alone produces. **Dev tree** (secondary): `python -P`, PYTHONPATH = "
        "functions/, the virtualenv's site-packages and timestamp .pyc, against the virtualenv's "
        "`import boto3` (at most 3 runs); 'left for first use' (one run) times importing our REST/OAuth clients (and requests) "
        "after the handler, what a first invocation that needs them adds. Top imports from "
        "`-X importtime` on the as-built copy (cumulative ms, one run)."
    )
    section.data.update(worst_ratio=worst, dev_tree=dev, artifact_provenance=provenance)


def _as_built(section: Section, functions: list[artifact.BuiltFunction], runs: int, *, top: bool) -> float:
    """Time every function's handler import from its read-only artifact; check each ratio."""
    flags = artifact.LAMBDA_FLAGS
    bare = next((f for f in functions if f.module.endswith(".leads")), functions[0])
    with artifact.read_only_copies(functions, bare) as copies:
        envs = {f.logical_id: artifact.lambda_env(copies.functions[f.logical_id]) for f in functions}
        base_env = envs[bare.logical_id]
        bare_env = artifact.lambda_env(copies.without_bytecode)
        times: dict[str, list[float]] = {f.logical_id: [] for f in functions}
        base_times: list[float] = []
        bare_times: list[float] = []
        for _ in range(runs):
            base_times.append(_import_seconds(BASELINE, base_env, flags=flags))
            for function in functions:
                times[function.logical_id].append(
                    _import_seconds(function.module, envs[function.logical_id], flags=flags)
                )
            bare_times.append(_import_seconds(bare.module, bare_env, flags=flags))
        tops = {
            f.logical_id: top_imports(f.module, envs[f.logical_id], flags=flags) if top else []
            for f in functions
        }
        written = copies.files_now() - copies.files_before
    base = median(base_times)
    rows: list[list[Any]] = []
    worst = 0.0
    for function in functions:
        seconds = median(times[function.logical_id])
        ratio = seconds / base
        worst = max(worst, ratio)
        rows.append(
            [
                function.logical_id,
                function.module,
                fmt(seconds * 1000, 0),
                fmt(ratio),
                ", ".join(f"{name} {ms:.0f}" for name, ms in tops[function.logical_id][:5]),
            ]
        )
        section.check(
            f"cold start as built: {function.logical_id} import ÷ boto3",
            f"{ratio:.2f}x ({seconds * 1000:.0f} ms vs {base * 1000:.0f} ms)",
            f"≤ {TARGET}x",
            ratio <= TARGET,
        )
    bare_seconds = median(bare_times)
    rows.append(
        [
            f"{bare.logical_id}, no bytecode (sam build alone)",
            bare.module,
            fmt(bare_seconds * 1000, 0),
            fmt(bare_seconds / base),
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
        f"As built (read-only artifact; import boto3 from it = {base * 1000:.0f} ms, median)",
        ["function", "handler module", "import ms (median)", "÷ import boto3", "top imports (cumulative ms)"],
        rows,
    )
    section.data.update(
        runs=runs,
        boto3_seconds=base,
        as_built_seconds={f.logical_id: times[f.logical_id] for f in functions},
        as_built_boto3_seconds=base_times,
        no_bytecode_seconds=bare_times,
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
