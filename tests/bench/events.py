"""Section 8: a portal importing 10,000 leads fires 10,000 ONCRMLEADADD; the path to the bus holds it.

The import happens inside the emulated portal (as a CSV import or a sync does in Bitrix24: no REST
call of ours), one ONCRMLEADADD per lead, POSTed one after another by the portal's event sender to
the bound /events (InstallFunction: authenticate, one conditional put per delivery). Then the
LeadEventsTable stream feeds PublisherFunction (batches of the template's BatchSize), which puts the
events on the stack's bus; a subscriber's rule sends them to its SQS queue, where they are counted.
Twice: without lead fields (no REST calls at all) and with LEAD_EVENT_FIELDS=TITLE,STATUS_ID, read
through LeadsFunction and its shared per-portal bucket (2 req/s, burst 50).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.bench.common import Section, fmt
from tests.bench.stack import EXPORT_EMULATOR, BenchStack, bench_stack

IMPORT = 10_000
SAMPLE = 300  # events read back and checked (ids, fields, tokens)
FIELDS = "TITLE,STATUS_ID"


def _subscribe(bench: BenchStack) -> str:
    sqs, events = bench.client("sqs"), bench.client("events")
    bus = bench.stack.running_info().event_bus_name
    url = sqs.create_queue(QueueName="bench-subscriber")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="bench", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["LeadCreated"]}))
    events.put_targets(Rule="bench", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return str(url)


def _received(bench: BenchStack, url: str, *, sample: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """How many events the queue holds, and (all of them, or `sample` of them) read and deleted.

    moto's ReceiveMessage walks the whole queue on every call, so reading 10,000 messages back takes
    longer than publishing them: the full import is counted from the queue's attributes and checked on
    a sample (once-only delivery is proven message by message in tests/security/test_security_lead_events.py).
    """
    sqs = bench.client("sqs")
    held = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"])  # fmt: skip
    out: list[dict[str, Any]] = []
    while sample is None or len(out) < sample:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages") or []
        if not messages:
            break
        out += [json.loads(m["Body"]) for m in messages]
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return held, out


def _import(bench: BenchStack, count: int) -> list[int]:
    """Add `count` leads inside the portal and queue one ONCRMLEADADD per lead for the bound handlers."""
    from bitrix24_emulator.lifecycle import bound_deliveries

    state = bench.emulator.state
    with state.lock:
        now = state.clock.now()
        ids = [state.leads.add({"TITLE": f"Imported {i}"}, now, 1).id for i in range(count)]
        for lead_id in ids:
            state.pending_deliveries.extend(
                bound_deliveries(state, "ONCRMLEADADD", [("data[FIELDS][ID]", str(lead_id))], 1)
            )
    state.flush_pending_deliveries()
    return ids


def _measure(bench: BenchStack, count: int) -> dict[str, Any]:
    url = _subscribe(bench)
    bench.stack.drain_queues()  # PortalConnected and friends: not counted
    _received(bench, url)
    bench.reset_portal()
    began = time.perf_counter()
    ids = _import(bench, count)
    if not bench.emulator.flush_events(3_600):
        raise RuntimeError("the portal did not send every event")
    delivered = time.perf_counter() - began
    log = [d for d in bench.emulator.events()["deliveries"] if d["event"] == "ONCRMLEADADD"]
    refused = sum(1 for d in log[-count:] if d["status"] != 200)
    publish_began = time.perf_counter()
    bench.stack.drain_queues()  # the streams: PublisherFunction publishes
    published = time.perf_counter() - publish_began
    held, events = _received(bench, url, sample=SAMPLE)
    stats = bench.emulator.stats()
    lead_ids = [e["detail"]["lead_id"] for e in events]
    statuses: dict[str, int] = {}
    for event in events:
        key = str(event["detail"].get("fields_status", "none"))
        statuses[key] = statuses.get(key, 0) + 1
    tokens = {c["access_token"] for c in bench.emulator.tokens()} | {bench.emulator.application_token}
    return {
        "leads": count,
        "deliveries_refused": refused,
        "delivery_seconds": delivered,
        "deliveries_per_second": count / delivered,
        "publish_seconds": published,
        "events_per_second": held / published if published else float("nan"),
        "end_to_end_events_per_second": held / (delivered + published),
        "received": held,
        "sampled": len(events),
        "sample_distinct_and_imported": len(set(lead_ids)) == len(lead_ids) and set(lead_ids) <= set(ids),
        "rest_requests": stats["requests"],
        "http_503": stats["http_503"],
        "http_429": stats["http_429"],
        "max_concurrent_requests": stats["max_concurrent_requests"],
        "fields_status": statuses,
        "token_in_an_event": any(t and t in json.dumps(events) for t in tokens),
    }


def run(section: Section, *, smoke: bool = False) -> None:
    """The import without and with lead fields."""
    count = 1_000 if smoke else IMPORT
    results: dict[str, dict[str, Any]] = {}
    for name, env in (("ids only", {}), (f"with fields {FIELDS}", {"LEAD_EVENT_FIELDS": FIELDS})):
        with bench_stack(
            leads=1_000, workers=2, emulator_settings=EXPORT_EMULATOR, env_overrides=env
        ) as bench:
            results[name] = _measure(bench, count)
        print(f"events [{name}] {json.dumps(results[name], default=str)}", flush=True)
    section.data.update(results)
    section.intro = (
        f"A portal imports {count:,} leads: {count:,} ONCRMLEADADD sent one at a time by the emulated portal "
        "to the bound /events, then the LeadEventsTable stream drained through PublisherFunction onto the "
        "stack's bus and a subscriber's rule -> SQS queue. Portal: 2 req/s, burst 50, 50 ms latency, server "
        "time at 1/100 (as section 1). Local stack on moto: absolute rates are the laptop's, not AWS's."
    )
    rows = [
        [
            name,
            fmt(r["received"]),
            fmt(r["deliveries_per_second"], 0),
            fmt(r["events_per_second"], 0),
            fmt(r["end_to_end_events_per_second"], 0),
            fmt(r["rest_requests"]),
            f"{r['http_503']} / {r['http_429']}",
            ", ".join(f"{k} {v:,}" for k, v in sorted(r["fields_status"].items())) + f" (of {r['sampled']})",
        ]
        for name, r in results.items()
    ]
    section.table(
        f"{count:,}-lead import",
        [
            "variant",
            "LeadCreated at the subscriber",
            "deliveries/s at /events",
            "events published/s",
            "end to end events/s",
            "REST calls",
            "503 / 429 at the portal",
            "fields_status (sample)",
        ],
        rows,
    )
    for name, r in results.items():
        section.check(
            f"every lead published once ({name})",
            f"{r['received']:,} at the subscriber, {r['deliveries_refused']} deliveries refused, "
            f"sample of {r['sampled']}: distinct imported leads {r['sample_distinct_and_imported']}",
            f"{count:,}, 0 errors",
            r["received"] == count and not r["deliveries_refused"] and r["sample_distinct_and_imported"],
        )
        section.check(
            f"within the portal's budget ({name})",
            f"{r['rest_requests']} REST calls, {r['http_503']} x 503, {r['http_429']} x 429",
            "0 refused by the portal",
            r["http_503"] == 0 and r["http_429"] == 0,
        )
        section.check(
            f"no token in an event ({name})", str(r["token_in_an_event"]), "False", not r["token_in_an_event"]
        )
