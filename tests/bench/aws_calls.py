"""Section 3: AWS API calls per invocation, cold and warm, per function (moto server + the emulator)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import requests

from tests.bench.common import REPO_ROOT, Section, child_env
from tests.bench.stack import BenchStack, bench_stack

_DAY = 86_400


class Probe:
    """A running aws_probe child for one function."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.http = requests.Session()

    def invoke(self, event: Any) -> Any:
        """A direct invocation in the probe; the handler's answer."""
        answer = self.http.post(f"{self.url}/_local/probe/invoke", json=event, timeout=120)
        answer.raise_for_status()
        return answer.json()

    def calls(self) -> dict[str, Any]:
        """Import time and the calls of every invocation so far."""
        answer = self.http.get(f"{self.url}/_local/probe/calls", timeout=30)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


@contextmanager
def probe(bench: BenchStack, function: str) -> Iterator[Probe]:
    """Start a fresh process serving `function` with every AWS call counted."""
    stack = bench.stack
    spec = stack.runtimes[function].spec
    routes = [{"method": r.method, "path": r.path} for r in stack.template.routes if r.function == function]
    job = {
        "function": function,
        "handler": spec.handler,
        "env": {**child_env(), **spec.environment},
        "routes": routes,
        "timeout": spec.timeout_seconds,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.aws_probe", json.dumps(job)],
        cwd=REPO_ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("{"):
            raise RuntimeError(f"the probe for {function} did not start")
        yield Probe(process, json.loads(line)["url"])
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _summary(calls: list[dict[str, str]]) -> dict[str, Any]:
    counts = Counter(c["service"] for c in calls)
    dynamo = [c for c in calls if c["service"] == "dynamodb"]
    pacing = [c for c in dynamo if c.get("table") == "RATE_LIMIT_TABLE"]
    reads = [c for c in dynamo if c["operation"] in {"GetItem", "Query", "BatchGetItem", "Scan"}]
    return {
        "total": len(calls),
        "dynamodb": counts.get("dynamodb", 0),
        "dynamodb_reads": len(reads),
        "pacing_writes": len(pacing),
        "kms": counts.get("kms", 0),
        "secretsmanager": counts.get("secretsmanager", 0),
        "sqs": counts.get("sqs", 0),
        "detail": ", ".join(
            f"{c['service']}:{c['operation']}"
            + (f"({c['table'].split('_')[0].lower()})" if c.get("table") else "")
            for c in calls
        ),
    }


def _authorize_state(bench: BenchStack) -> tuple[str, str]:
    """A pending authorization through the stack's own AuthorizeFunction: (callback URL, cookie)."""
    stack = bench.stack
    response = requests.get(
        f"{stack.api_url}/authorize",
        params={"domain": bench.emulator.portal_domain},
        allow_redirects=False,
        timeout=30,
    )
    if response.status_code != 302:
        raise RuntimeError(f"authorize answered {response.status_code}")
    state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    return bench.emulator.approve(state), cookie


def _make_due(bench: BenchStack) -> None:
    """Move the portal's refresh into the past (record and emulator), as the demo does."""
    days = int(bench.function_env("RefreshWorkerFunction").get("REFRESH_AFTER_DAYS") or 21)
    obtained = int(time.time()) - (days + 1) * _DAY
    bench.emulator.age_refresh_tokens((days + 1) * _DAY)
    bench.client("dynamodb").update_item(
        TableName=bench.table("PortalsTable"),
        Key={"member_id": {"S": bench.member_id}},
        UpdateExpression="SET refresh_obtained_at = :o, refresh_due_at = :d, last_refresh_attempt_at = :o",
        ExpressionAttributeValues={":o": {"N": str(obtained)}, ":d": {"N": str(obtained + days * _DAY)}},
    )


def _refresh_event(bench: BenchStack) -> dict[str, Any]:
    """The SQS event RefreshWorkerFunction would get for the message the sweep queued."""
    sqs = bench.client("sqs")
    url = bench.stack.running_info().queues["RefreshQueue"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    if not messages:
        raise RuntimeError("the sweep queued nothing")
    records = []
    for message in messages[:1]:
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))},
                "messageAttributes": {},
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": bench.stack.aws_region,
            }
        )
    for message in messages:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return {"Records": records}


def _on_probe(probe_url: str, callback_url: str) -> str:
    parts = urlsplit(callback_url)
    target = urlsplit(probe_url)
    return urlunsplit((target.scheme, target.netloc, parts.path, parts.query, ""))


def _measure(bench: BenchStack) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    results: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    emulator = bench.emulator

    def record(function: str, labels: list[str], p: Probe) -> None:
        invocations = p.calls()["invocations"]
        results[function] = [
            (label, _summary(inv["calls"])) for label, inv in zip(labels, invocations, strict=False)
        ]

    with probe(bench, "LeadsFunction") as p:
        for _ in range(2):
            answer = p.invoke({"member_id": bench.member_id, "limit": 100})
            assert "leads" in answer, answer
        record("LeadsFunction", ["cold", "warm (same token)"], p)
    with probe(bench, "AuthorizeFunction") as p:
        for _ in range(2):
            requests.get(
                f"{p.url}/authorize",
                params={"domain": emulator.portal_domain},
                allow_redirects=False,
                timeout=30,
            )
        record("AuthorizeFunction", ["cold", "warm"], p)
    pending = [_authorize_state(bench) for _ in range(2)]
    with probe(bench, "CallbackFunction") as p:
        for url, cookie in pending:
            answer = requests.get(
                _on_probe(p.url, url), headers={"Cookie": cookie}, allow_redirects=False, timeout=60
            )
            if answer.status_code >= 400:
                raise RuntimeError(f"callback answered {answer.status_code}")
        record("CallbackFunction", ["cold", "warm"], p)
    with probe(bench, "InstallFunction") as p:
        for kind, path in (("page", "/install"), ("page", "/install"), ("event", "/events")):
            sent = emulator.send_install(f"{p.url}{path}", kind)
            if sent["status"] != 200:
                raise RuntimeError(f"install {kind} answered {sent['status']}")
        record("InstallFunction", ["cold (install page)", "warm (install page)", "warm (ONAPPINSTALL)"], p)
    with probe(bench, "RefreshFunction") as sweep, probe(bench, "RefreshWorkerFunction") as worker:
        for _ in range(2):
            _make_due(bench)
            report = sweep.invoke({})
            assert report.get("queued") == 1, report
            answer = worker.invoke(_refresh_event(bench))
            assert answer == {"batchItemFailures": []}, answer
        record("RefreshFunction", ["cold (1 due)", "warm (1 due)"], sweep)
        record(
            "RefreshWorkerFunction", ["cold (1 refresh)", "warm (same portal again, its pair cached)"], worker
        )
    return results


def run(section: Section) -> None:
    """Count the calls on a fresh local stack and check the targets."""
    with bench_stack(leads=1_000, workers=2) as bench:
        results = _measure(bench)
    section.data["results"] = {k: [{"invocation": label, **s} for label, s in v] for k, v in results.items()}
    header = [
        "function",
        "invocation",
        "AWS calls",
        "DynamoDB (reads)",
        "pacing writes",
        "KMS",
        "Secrets Manager",
        "SQS",
        "calls in order",
    ]
    rows = []
    for function, items in results.items():
        for label, s in items:
            rows.append(
                [
                    function,
                    label,
                    s["total"],
                    f"{s['dynamodb']} ({s['dynamodb_reads']})",
                    s["pacing_writes"],
                    s["kms"],
                    s["secretsmanager"],
                    s["sqs"],
                    s["detail"],
                ]
            )
    section.intro = (
        "Each function runs in a fresh process (its first invocation is the cold one) with botocore's "
        "BaseClient._make_api_call wrapped, against the local stack's moto server and the emulator; "
        "HTTP functions get their events from the local stack's own API Gateway front. 'pacing writes' "
        "are the shared rate-limit bucket's UpdateItem calls (RateLimitTable), counted inside DynamoDB."
    )
    section.table("AWS API calls per invocation", header, rows)
    leads_warm = dict(results["LeadsFunction"])["warm (same token)"]
    section.check(
        "AWS calls: warm LeadsFunction (unchanged token)",
        f"{leads_warm['dynamodb_reads']} DynamoDB read, {leads_warm['kms']} KMS, {leads_warm['secretsmanager']} "
        f"Secrets Manager (+ {leads_warm['pacing_writes']} pacing write)",
        "1 DynamoDB read, 0 KMS, 0 Secrets Manager",
        leads_warm["dynamodb_reads"] == 1 and leads_warm["kms"] == 0 and leads_warm["secretsmanager"] == 0,
        "the pacing write is the shared request budget (section 5), not a token read",
    )
    callback = results["CallbackFunction"]
    worst_callback = max(s["total"] for _, s in callback)
    section.check(
        "AWS calls: callback",
        " / ".join(f"{s['total']} {label}" for label, s in callback),
        "≤ 6",
        worst_callback <= 6,
        "state, portal read + write, KMS Encrypt, the client secret (cold), and the queued event.bind check "
        "(SQS SendMessage) that every stored grant needs (ONAPPUNINSTALL only arrives through it)",
    )
    refresh = results["RefreshWorkerFunction"]
    worst_refresh = max(s["total"] for _, s in refresh)
    section.check(
        "AWS calls: one refresh (RefreshWorkerFunction)",
        " / ".join(f"{s['total']} {label}" for label, s in refresh),
        "≤ 4",
        worst_refresh <= 4,
        "a warm worker refreshing a portal it has not seen also decrypts (KMS): 5, see section 4",
    )
