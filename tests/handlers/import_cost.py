"""Cold-start import cost of every handler module against `import boto3`, in fresh processes.

    .venv/bin/python -m tests.handlers.import_cost [--runs 5]

Per module it reports the median over the runs of (a) the import's CPU time inside the process
(`time.process_time`, least disturbed by other load on the machine), (b) its wall time inside the
process, and (c) the wall time of the whole `python -c "import X"` process; each with its ratio to
the same figure for boto3. Runs are interleaved so load changes hit every module alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from tests.support.servers import REPO_ROOT

HANDLERS = (
    "authorize",
    "callback",
    "install",
    "refresh_sweep",
    "refresh_worker",
    "token_rescue",
    "leads",
)
_PROBE = (
    "import time; c=time.process_time(); w=time.perf_counter(); import {module}; "
    "print(time.process_time()-c, time.perf_counter()-w)"
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    # As in Lambda: only the function code (the CodeUri) on the path.
    env["PYTHONPATH"] = str(REPO_ROOT / "functions")
    env["AWS_DEFAULT_REGION"] = "eu-central-1"
    return env


def measure(module: str, env: dict[str, str]) -> tuple[float, float, float]:
    """(cpu, wall, process wall) seconds of importing `module` in a fresh interpreter."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-P", "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    process = time.perf_counter() - started
    cpu, wall = (float(x) for x in out.stdout.split())
    return cpu, wall, process


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    env = _env()
    modules = ["boto3", *(f"b24connector.handlers.{name}" for name in HANDLERS)]
    for module in modules:  # warm the .pyc caches and the OS file cache
        measure(module, env)
    samples: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modules}
    for _ in range(args.runs):
        for module in modules:
            samples[module].append(measure(module, env))
    medians = {m: tuple(statistics.median(s[i] for s in samples[m]) for i in range(3)) for m in modules}
    base = medians["boto3"]
    print(f"median of {args.runs} fresh processes; ratio to `import boto3` in brackets")
    print(f"{'module':42} {'cpu ms':>14} {'wall ms':>14} {'process ms':>14}")
    for module in modules:
        cells = [f"{v * 1000:7.1f} ({v / b:4.2f})" for v, b in zip(medians[module], base, strict=True)]
        print(f"{module:42} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
