"""AWS cost of a lead export and of keep-alive refresh, from measured counts and public list prices.

`python -m tests.bench.cost [realistic results.json]` prints the tables of docs/performance.md
("Cost"). Counts and durations come from the bench (the `realistic`, `aws` and `refresh` sections);
prices are eu-central-1 list prices for arm64 Lambda, DynamoDB on-demand (Standard table class),
KMS, SQS standard queues, Secrets Manager and CloudWatch, without the free tier. Every price names
the page it comes from; check them before quoting a figure, list prices change.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# eu-central-1 list prices (USD), December 2026 reading of the pages below.
PRICES: dict[str, tuple[float, str]] = {
    "lambda_gb_second_arm": (0.0000133334, "https://aws.amazon.com/lambda/pricing/"),
    "lambda_request": (0.20 / 1e6, "https://aws.amazon.com/lambda/pricing/"),
    "dynamodb_wru": (0.7625 / 1e6, "https://aws.amazon.com/dynamodb/pricing/on-demand/"),
    "dynamodb_rru": (0.1525 / 1e6, "https://aws.amazon.com/dynamodb/pricing/on-demand/"),
    "kms_request": (0.03 / 1e4, "https://aws.amazon.com/kms/pricing/"),
    "kms_key_month": (1.00, "https://aws.amazon.com/kms/pricing/"),
    "sqs_request": (0.40 / 1e6, "https://aws.amazon.com/sqs/pricing/"),
    "secrets_api_call": (0.05 / 1e4, "https://aws.amazon.com/secrets-manager/pricing/"),
    "secret_month": (0.40, "https://aws.amazon.com/secrets-manager/pricing/"),
    "logs_ingest_gb": (0.63, "https://aws.amazon.com/cloudwatch/pricing/"),
    "metric_month": (0.30, "https://aws.amazon.com/cloudwatch/pricing/"),
}
# Lambda gives a function one full vCPU at 1,769 MB and a proportional share below that.
FULL_VCPU_MB = 1769
LOG_BYTES_PER_INVOCATION = 1_600  # START/END/REPORT + our JSON line + one EMF metrics line (local logs)


def price(name: str) -> float:
    """The list price of one unit."""
    return PRICES[name][0]


@dataclass(frozen=True)
class Export:
    """What one 100,000-lead export through LeadsFunction used (measured in the `realistic` section)."""

    invocations: int
    invocation_seconds: float  # sum of the invocations' durations as the client saw them
    cpu_seconds: float  # LeadsFunction workers' CPU over the export (this machine's cores)
    rest_requests: int  # = pacing UpdateItem calls (one token per write)
    memory_mb: int = 1024
    cold_containers: int = 0  # each adds one KMS Decrypt and one Secrets Manager read


def export_cost(e: Export) -> list[tuple[str, str, float]]:
    """(item, quantity, USD) rows for one export."""
    gb_s = e.invocation_seconds * e.memory_mb / 1024
    return [
        (
            "Lambda duration",
            f"{gb_s:.1f} GB-s ({e.invocations} invocations, {e.memory_mb} MB)",
            gb_s * price("lambda_gb_second_arm"),
        ),
        ("Lambda requests", f"{e.invocations}", e.invocations * price("lambda_request")),
        (
            "DynamoDB writes (pacing UpdateItem, 1 WRU)",
            f"{e.rest_requests}",
            e.rest_requests * price("dynamodb_wru"),
        ),
        ("DynamoDB reads (portal GetItem, 1 RRU)", f"{e.invocations}", e.invocations * price("dynamodb_rru")),
        (
            "KMS Decrypt (cold containers only)",
            f"{e.cold_containers}",
            e.cold_containers * price("kms_request"),
        ),
        (
            "Secrets Manager reads (cold containers only)",
            f"{e.cold_containers}",
            e.cold_containers * price("secrets_api_call"),
        ),
        (
            "CloudWatch Logs ingestion",
            f"{e.invocations * LOG_BYTES_PER_INVOCATION / 1024:.0f} KB",
            e.invocations * LOG_BYTES_PER_INVOCATION / 2**30 * price("logs_ingest_gb"),
        ),
    ]


def memory_model(
    e: Export, wall: float, sizes: tuple[int, ...] = (256, 512, 1024, 1769)
) -> list[tuple[int, float, float, float, float]]:
    """(MB, Lambda s, export wall s, USD, USD x wall) per memory size: a model from measured inputs.

    The measured worker CPU (this machine's cores, taken as one full vCPU each) stretches by 1769/MB
    below a full vCPU; the rest of each invocation is waiting on the portal, which memory does not
    change. The export's wall grows by the stretch of the two invocations on its critical path (the
    first answer, then the slowest part), each with the average CPU of one invocation.
    """
    waiting = max(e.invocation_seconds - e.cpu_seconds, 0.0)
    per_invocation_cpu = e.cpu_seconds / e.invocations
    measured_stretch = max(1.0, FULL_VCPU_MB / e.memory_mb)
    out = []
    for mb in sizes:
        stretch = max(1.0, FULL_VCPU_MB / mb)
        seconds = waiting + e.cpu_seconds * stretch
        export_wall = wall + 2 * per_invocation_cpu * (stretch - measured_stretch)
        usd = seconds * mb / 1024 * price("lambda_gb_second_arm") + e.invocations * price("lambda_request")
        out.append((mb, seconds, export_wall, usd, usd * export_wall))
    return out


@dataclass(frozen=True)
class Refresh:
    """Keep-alive refresh of 1,000 portals for a month (counts from the `aws` and `refresh` sections)."""

    portals: int = 1_000
    refresh_after_days: int = 21  # template.yaml RefreshAfterDays default
    seconds_per_refresh: float = 0.39  # drain wall x workers / refreshes on this machine (an upper bound)
    worker_memory_mb: int = 512
    batch_size: int = 10  # RefreshQueue messages per worker invocation (template.yaml)
    wru_per_refresh: float = 4.0  # 2 UpdateItem of a ~1-2 KB portal record
    kms_per_refresh: float = 2.0  # Decrypt + Encrypt
    sqs_per_refresh: float = 0.1 + 0.1 + 0.1  # SendMessageBatch, ReceiveMessage, DeleteMessageBatch per 10
    sweeps_per_month: int = 720  # rate(1 hour)
    sweep_seconds: float = 0.5
    sweep_rru: float = 16 * 0.5  # 16 shard Queries, eventually consistent, few due items each


@dataclass(frozen=True)
class Drain:
    """Inputs of the refresh drain model, measured by the `refresh` section on this machine."""

    worker_cpu_ms: float = (
        13.5  # RefreshWorkerFunction CPU per refresh (boto3, KMS/DynamoDB clients, OAuth call)
    )
    aws_calls: float = 4.0  # lease UpdateItem, Decrypt, Encrypt, commit UpdateItem (warm worker)
    # Assumed, not measured here: an in-region DynamoDB UpdateItem or KMS call from Lambda (single-digit ms),
    # and the SQS poller's invoke per batch of 10 messages.
    aws_call_ms: float = 8.0
    batch_overhead_ms: float = 20.0
    batch_size: int = 10


def drain_model(
    d: Drain, due: int, workers: int, latency_s: float, memory_mb: int
) -> tuple[float, float, float]:
    """(seconds per refresh, drain seconds, drain ÷ ideal) for `due` portals on `workers` workers in AWS.

    A worker refreshes the records of its batch one after another (the batch processor is sequential):
    each costs its CPU, stretched below a full vCPU by 1769/MB, its AWS calls and one OAuth round trip.
    Workers run in parallel and share nothing but DynamoDB and KMS, which do not queue at this rate.
    The ideal is the bench's: due x OAuth latency / workers.
    """
    stretch = max(1.0, FULL_VCPU_MB / memory_mb)
    per_refresh = (
        d.worker_cpu_ms * stretch + d.aws_calls * d.aws_call_ms + d.batch_overhead_ms / d.batch_size
    ) / 1000 + latency_s
    drain = -(-due // workers) * per_refresh
    return per_refresh, drain, drain / (due * latency_s / workers)


def refresh_cost(r: Refresh) -> list[tuple[str, str, float]]:
    """(item, quantity, USD) rows for a month of keep-alive refresh of `r.portals` portals."""
    refreshes = r.portals * 30 / r.refresh_after_days
    worker_invocations = refreshes / r.batch_size
    worker_gb_s = refreshes * r.seconds_per_refresh * r.worker_memory_mb / 1024
    sweep_gb_s = r.sweeps_per_month * r.sweep_seconds * 512 / 1024
    invocations = worker_invocations + r.sweeps_per_month
    return [
        ("refreshes per month", f"{refreshes:,.0f}", 0.0),
        (
            "Lambda duration (workers + hourly sweep)",
            f"{worker_gb_s + sweep_gb_s:,.0f} GB-s",
            (worker_gb_s + sweep_gb_s) * price("lambda_gb_second_arm"),
        ),
        ("Lambda requests", f"{invocations:,.0f}", invocations * price("lambda_request")),
        (
            "DynamoDB writes",
            f"{refreshes * r.wru_per_refresh:,.0f} WRU",
            refreshes * r.wru_per_refresh * price("dynamodb_wru"),
        ),
        (
            "DynamoDB reads (sweeps)",
            f"{r.sweeps_per_month * r.sweep_rru:,.0f} RRU",
            r.sweeps_per_month * r.sweep_rru * price("dynamodb_rru"),
        ),
        (
            "KMS requests",
            f"{refreshes * r.kms_per_refresh:,.0f}",
            refreshes * r.kms_per_refresh * price("kms_request"),
        ),
        (
            "SQS requests",
            f"{refreshes * r.sqs_per_refresh:,.0f}",
            refreshes * r.sqs_per_refresh * price("sqs_request"),
        ),
        (
            "CloudWatch Logs ingestion",
            f"{invocations * LOG_BYTES_PER_INVOCATION / 2**20:.1f} MB",
            invocations * LOG_BYTES_PER_INVOCATION / 2**30 * price("logs_ingest_gb"),
        ),
    ]


def _export_from(path: Path) -> tuple[Export, float]:
    """The median-wall run of ours at 50 ms in a `realistic` results.json, and its wall."""
    data: dict[str, Any] = json.loads(path.read_text())
    runs = data["sections"]["realistic"]["data"]["results"]["50"]["leads_function"]
    measured = sorted(
        (r for r in runs if "total_invoke_seconds" in r), key=lambda r: float(r["wall_seconds"])
    )
    run = measured[(len(measured) - 1) // 2]
    export = Export(
        invocations=int(run["invocations"]),
        invocation_seconds=float(run["total_invoke_seconds"]),
        cpu_seconds=float(run.get("lambda_cpu_seconds") or 0.0),
        rest_requests=int(run["requests"]),
    )
    return export, float(run["wall_seconds"])


def _print(title: str, rows: list[tuple[str, str, float]]) -> None:
    print(f"\n{title}\n| item | quantity | USD |\n|---|---|---|")
    for item, quantity, usd in rows:
        print(f"| {item} | {quantity} | {usd:.6f} |")
    print(f"| **total** | | **{sum(r[2] for r in rows):.6f}** |")


def main(argv: list[str]) -> int:
    """Print the cost tables."""
    export, wall = _export_from(Path(argv[0])) if argv else (Export(17, 27.0, 0.8, 50), 2.4)
    _print(f"Per 100,000-lead export ({export}, wall {wall:.2f} s)", export_cost(export))
    print(
        "\n| LeadsFunction MB | Lambda s (model) | export wall s (model) | USD per export | USD x wall s |"
        "\n|---|---|---|---|---|"
    )
    for mb, seconds, export_wall, usd, score in memory_model(export, wall):
        print(f"| {mb} | {seconds:.1f} | {export_wall:.2f} | {usd:.6f} | {score:.6f} |")
    _print("Per 1,000 portals per month of keep-alive refresh", refresh_cost(Refresh()))
    print(
        "\nRefresh drain model, 10,000 due portals, 10 workers"
        "\n| OAuth latency | worker MB | s per refresh | drain s | ÷ ideal |\n|---|---|---|---|---|"
    )
    for latency in (0.05, 0.2):
        for mb in (512, 1024, 1769):
            per, drain, ratio = drain_model(Drain(), 10_000, 10, latency, mb)
            print(f"| {latency * 1000:.0f} ms | {mb} | {per:.3f} | {drain:.0f} | {ratio:.2f}x |")
    fixed = 2 * price("kms_key_month") + 2 * price("secret_month")
    print(
        f"\nFixed per stack and month: 2 KMS keys + 2 secrets = {fixed:.2f} USD "
        "(+ 25 alarms at 0.10 USD, custom metrics at 0.30 USD each)"
    )
    for name, (value, url) in PRICES.items():
        print(f"- {name}: {value:.10g} USD ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
