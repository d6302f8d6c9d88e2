"""LifecycleQueue drained the way Lambda's SQS event source runs LifecycleFunction (test rigs only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class DrainCounts(Protocol):
    """Counters a drain fills in (the rigs' LifecycleDrain)."""

    done: int
    retried: int


def drain_queue(
    sqs: Any, queue_url: str, invoke: Callable[[dict[str, Any]], Any], counts: DrainCounts, *, rounds: int
) -> None:
    """Feed every visible message to `invoke` in batches of 10, deleting what succeeded, until none is left.

    A message the function reports failed is made visible again at once (instead of after the visibility
    timeout), so its retry happens in the next round; after `rounds` it stays queued.
    """
    for _ in range(rounds):
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=30
        ).get("Messages", [])
        if not messages:
            return
        records = [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-central-1:123456789012:lifecycle",
                "awsRegion": "eu-central-1",
            }
            for m in messages
        ]
        answer = invoke({"Records": records})
        failed = {item["itemIdentifier"] for item in answer.get("batchItemFailures", [])}
        for message in messages:
            if message["MessageId"] in failed:
                counts.retried += 1
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                counts.done += 1
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
