"""Reading the CloudWatch EMF lines Powertools Metrics prints when a handler returns."""

from __future__ import annotations

import json


def emf_counts(stdout: str) -> dict[str, float]:
    """Metric name -> summed value over every EMF document in `stdout` (other lines are skipped)."""
    counts: dict[str, float] = {}
    for line in stdout.splitlines():
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if not isinstance(document, dict) or "_aws" not in document:
            continue
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                name = metric["Name"]
                value = document[name]
                counts[name] = counts.get(name, 0) + (sum(value) if isinstance(value, list) else value)
    return counts
