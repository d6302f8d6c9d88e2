"""Shared bench machinery: machine facts, medians, child processes that answer one JSON line."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
PYTHONPATH = os.pathsep.join(str(REPO_ROOT / part) for part in ("functions", "client/src", "infra", "."))
# The fields every export asks for (the fact sheet's crm.lead.list example).
SELECT = ["ID", "TITLE", "STATUS_ID", "DATE_MODIFY"]
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_SESSION_TOKEN": "test",
}


def median(values: Iterable[float]) -> float:
    """The median of the values (NaN when there are none)."""
    data = list(values)
    return statistics.median(data) if data else float("nan")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a bench child: repo on PYTHONPATH, fake AWS credentials, no real profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_PROFILE", "AWS_ENDPOINT_URL"))}
    env.update(FAKE_AWS)
    env.setdefault("AWS_DEFAULT_REGION", "eu-central-1")
    env["PYTHONPATH"] = PYTHONPATH
    env["PYTHONDONTWRITEBYTECODE"] = env.get("PYTHONDONTWRITEBYTECODE", "")
    env.update(extra or {})
    return env


def run_child(module: str, job: Mapping[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
    """Run `python -m module <job json>` in a fresh interpreter; its last stdout line, decoded."""
    completed = subprocess.run(
        [sys.executable, "-m", module, json.dumps(job)],
        cwd=REPO_ROOT,
        env=child_env(job.get("env")),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout)[-800:]
        raise RuntimeError(f"{module} failed (exit {completed.returncode}): {tail}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, in KiB; None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used so far (Linux /proc); None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class Check:
    """One target: what was measured against what was asked, and whether it holds."""

    section: str
    name: str
    measured: str
    target: str
    ok: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "section": self.section,
            "name": self.name,
            "measured": self.measured,
            "target": self.target,
            "ok": self.ok,
            "note": self.note,
        }


@dataclass
class Section:
    """One part of the bench: its tables (Markdown-ready rows), raw data and checks."""

    key: str
    title: str
    intro: str = ""
    tables: list[tuple[str, Sequence[str], list[Sequence[Any]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self, caption: str, header: Sequence[str], rows: list[Sequence[Any]]) -> None:
        """Add a table."""
        self.tables.append((caption, header, rows))

    def check(self, name: str, measured: str, target: str, ok: bool, note: str = "") -> None:
        """Add a target check."""
        self.checks.append(Check(self.key, name, measured, target, ok, note))


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers for tables: thousands separators, a few decimals, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.{digits}f}"
    return str(value)
