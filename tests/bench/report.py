"""Results as Markdown (tests/bench/results.md), JSON (tests/bench/results.json) and a console table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench.common import BENCH_DIR, Section

COMMAND = "make bench    # = .venv/bin/python -m tests.bench (smoke: make bench-smoke)"


def _markdown_table(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(meta: dict[str, Any], sections: list[Section]) -> str:
    """The whole report as Markdown."""
    m = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m['date']} on {m['nproc']} x {m['cpu']}, Python {m['python']} ({m['platform']}); "
        f"load average at start {m['load_average_at_start']}. Mode: {meta['mode']}, "
        f"{meta['runs']} run(s) per export figure, total {meta['seconds']:.0f} s.",
        "",
        f"Reproduce: `{COMMAND}`.",
        "",
        "Noisy machine: wall times are medians of several runs and compared as ratios taken inside each",
        "run; counts (requests, COUNT pages, modeled seconds) are deterministic.",
        "",
        "## Targets",
        "",
    ]
    checks = [c for s in sections for c in s.checks]
    lines += _markdown_table(
        ["", "target", "measured", "asked", "note"],
        [["✅" if c.ok else "❌", c.name, c.measured, c.target, c.note] for c in checks],
    )
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        for caption, header, rows in section.tables:
            lines += [f"**{caption}**", ""]
            lines += _markdown_table(header, rows)
            lines.append("")
        for note in section.notes:
            lines.append(f"- {note}")
        lines.append(f"\n_Section time: {section.seconds:.0f} s._")
    return "\n".join(lines) + "\n"


def console(sections: list[Section]) -> str:
    """A plain-text rendering of every table and the target checks."""
    out: list[str] = []
    for section in sections:
        for caption, header, rows in section.tables:
            out += ["", f"== {section.title}: {caption}"]
            table = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
            widths = [max(len(row[i]) for row in table) for i in range(len(header))]
            for index, row in enumerate(table):
                out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
                if index == 0:
                    out.append("  ".join("-" * w for w in widths))
    out += ["", "== Targets"]
    for section in sections:
        for c in section.checks:
            out.append(f"  [{'OK ' if c.ok else 'MISS'}] {c.name}: {c.measured} (asked {c.target})")
    return "\n".join(out)


def write(meta: dict[str, Any], sections: list[Section], directory: Path = BENCH_DIR) -> tuple[Path, Path]:
    """Write results.md and results.json; return their paths."""
    md_path, json_path = directory / "results.md", directory / "results.json"
    md_path.write_text(markdown(meta, sections), encoding="utf-8")
    document = {
        "meta": meta,
        "checks": [c.as_dict() for s in sections for c in s.checks],
        "sections": {
            s.key: {
                "title": s.title,
                "seconds": round(s.seconds, 1),
                "tables": [
                    {"caption": c, "header": list(h), "rows": [list(r) for r in rows]}
                    for c, h, rows in s.tables
                ],
                "notes": s.notes,
                "data": s.data,
            }
            for s in sections
        },
    }
    json_path.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    return md_path, json_path
