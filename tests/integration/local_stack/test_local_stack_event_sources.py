"""Schedule -> queue -> worker: Scheduler-shaped events, Lambda-built SQS batches, partial batch failures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from local_stack import LocalStack
from local_stack.resources import aws_client


def _queue_counts(stack: LocalStack, queue: str) -> tuple[int, int]:
    sqs = aws_client("sqs", stack.aws_endpoint_url, stack.aws_region)
    attributes = sqs.get_queue_attributes(
        QueueUrl=stack.running_info().queues[queue],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _records(seen_file: Path) -> list[dict[str, Any]]:
    if not seen_file.exists():
        return []
    return [json.loads(line) for line in seen_file.read_text(encoding="utf-8").splitlines()]


def _empty_queues(stack: LocalStack) -> None:
    """Delete every message, waiting out in-flight ones (the test queue's visibility timeout is 1 s)."""
    sqs = aws_client("sqs", stack.aws_endpoint_url, stack.aws_region)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        busy = False
        for url in stack.running_info().queues.values():
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            for message in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            in_flight = int(
                sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
                )["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
            )
            busy = busy or bool(messages) or in_flight > 0
        if not busy:
            return
        time.sleep(0.2)
    raise AssertionError("the test queues did not empty")


@pytest.fixture
def clean_queues(fake_stack: LocalStack, seen_file: Path) -> None:
    _empty_queues(fake_stack)
    seen_file.unlink(missing_ok=True)


@pytest.mark.usefixtures("clean_queues")
def test_schedule_then_drain_deletes_successes_and_keeps_the_reported_failure(
    fake_stack: LocalStack, seen_file: Path
) -> None:
    # When the schedule fires (the sweep enqueues five messages; the worker fails the third)
    run = fake_stack.run_schedule("SweepFunction")
    # Then the sweep got the schedule's Input with the context attribute filled in
    assert run.result.function_error is None
    assert run.event["count"] == 5
    assert run.event["at"].endswith("Z")
    assert "<aws.scheduler" not in json.dumps(run.event)
    # And the drain fed all five to the worker, deleted four and left the failed one in flight
    assert run.drain is not None
    assert (run.drain.received, run.drain.deleted, run.drain.failed) == (5, 4, 1)
    assert _queue_counts(fake_stack, "WorkQueue") == (0, 1)
    records = _records(seen_file)
    assert len(records) == 5
    failed = next(record for record in records if json.loads(record["body"])["fail"])
    assert [i for batch in run.drain.batches for i in batch.failed_message_ids] == [failed["messageId"]]

    # When the visibility timeout (1 s in the test template) passes and the queue is drained again
    time.sleep(1.2)
    again = fake_stack.drain_queues()
    # Then the failed message comes back once more (receive count 2), fails again and moves to the
    # DLQ on its next receive (maxReceiveCount 2), as SQS redrive does
    assert again.received == 1
    retried = _records(seen_file)[-1]
    assert retried["messageId"] == failed["messageId"]
    assert retried["attributes"]["ApproximateReceiveCount"] == "2"
    time.sleep(1.2)
    assert fake_stack.drain_queues().received == 0
    assert _queue_counts(fake_stack, "WorkDLQ")[0] == 1


@pytest.mark.usefixtures("clean_queues")
def test_sqs_records_have_the_lambda_event_shape(fake_stack: LocalStack, seen_file: Path) -> None:
    fake_stack.run_schedule("SweepFunction")
    record = _records(seen_file)[0]
    info = fake_stack.running_info()
    assert set(record) >= {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["eventSource"] == "aws:sqs"
    assert (
        record["eventSourceARN"] == f"arn:aws:sqs:{info.aws_region}:123456789012:b24connector-local-WorkQueue"
    )
    assert record["awsRegion"] == info.aws_region
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= set(record["attributes"])
    assert record["messageAttributes"]["kind"] == {
        "stringValue": "refresh",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert len(record["md5OfBody"]) == 32


@pytest.mark.usefixtures("clean_queues")
def test_schedule_endpoint_runs_the_same_path_over_http(fake_stack: LocalStack) -> None:
    for base in (fake_stack.running_info().local_admin_url, f"{fake_stack.api_url}/_local"):
        _empty_queues(fake_stack)
        answer = requests.post(f"{base}/schedule/SweepFunction", timeout=60)
        assert answer.status_code == 200
        body = answer.json()
        assert body["function"] == "SweepFunction"
        assert body["result"]["sent"] == 5
        assert body["drain"]["received"] == 5
        assert body["drain"]["deleted"] == 4
    missing = requests.post(
        f"{fake_stack.running_info().local_admin_url}/schedule/DirectFunction", timeout=10
    )
    assert missing.status_code == 404
