"""`python -m iam_check`: evaluate the recorded AWS calls against template.yaml; exit 1 on any finding."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from iam_check.check import DEFAULT_EXPECTED_UNUSED, run_check
from iam_check.requests import read_recording
from iam_check.simulator import SimulatorError
from iam_check.stack import REPO_ROOT, StackError


def main(argv: list[str] | None = None) -> int:
    """Run the check and print the report."""
    parser = argparse.ArgumentParser(prog="python -m iam_check", description=__doc__)
    parser.add_argument("--calls", type=Path, default=REPO_ROOT / ".local" / "iam-calls.jsonl")
    parser.add_argument("--template", type=Path, default=REPO_ROOT / "template.yaml")
    parser.add_argument("--env", action="append", help="samconfig environment(s) (default: dev and prod)")
    parser.add_argument("--expected-unused", type=Path, default=DEFAULT_EXPECTED_UNUSED)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        calls = read_recording(args.calls)
        reports = [
            run_check(args.template, calls, env=env, expected_unused=args.expected_unused)
            for env in (args.env or ["dev", "prod"])
        ]
    except (StackError, SimulatorError) as exc:
        print(f"IAM check: {exc}", file=sys.stderr)
        return 1
    for report in reports:
        print(report.text())
    print(f"IAM check took {time.monotonic() - started:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps([{**vars(r), "unused": [str(g) for g in r.unused],
                         "expected_unused": [str(g) for g in r.expected_unused]} for r in reports], indent=1),
            encoding="utf-8",
        )  # fmt: skip
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
