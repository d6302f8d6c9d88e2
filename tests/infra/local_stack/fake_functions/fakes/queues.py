"""The schedule -> queue -> worker path: a sweep that enqueues, a worker that reports partial failures."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3


def sweep(event: Any, context: Any) -> dict[str, Any]:
    """Enqueue the messages the event asks for (default five, the third one failing)."""
    sqs = boto3.client("sqs")
    count = int(event.get("count", 5)) if isinstance(event, dict) else 5
    for n in range(count):
        sqs.send_message(
            QueueUrl=os.environ["WORK_QUEUE_URL"],
            MessageBody=json.dumps({"n": n, "fail": n == 2}),
            MessageAttributes={"kind": {"DataType": "String", "StringValue": "refresh"}},
        )
    return {"sent": count, "event": event}


def work(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record every record seen; report the ones marked to fail."""
    failures = []
    with open(os.environ["SEEN_FILE"], "a", encoding="utf-8") as seen:
        for record in event["Records"]:
            seen.write(json.dumps(record) + "\n")
            if json.loads(record["body"]).get("fail"):
                failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
