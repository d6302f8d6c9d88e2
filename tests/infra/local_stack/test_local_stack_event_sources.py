"""Schedule -> queue -> worker: Scheduler-shaped events, Lambda-built SQS batches, partial batch failures."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

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


def _release(stack: LocalStack, receipt_handle: str) -> None:
    """Make an in-flight message visible now instead of after the 30 s visibility timeout."""
    sqs = aws_client("sqs", stack.aws_endpoint_url, stack.aws_region)
    sqs.change_message_visibility(
        QueueUrl=stack.running_info().queues["WorkQueue"], ReceiptHandle=receipt_handle, VisibilityTimeout=0
    )


def _empty_queues(stack: LocalStack, seen_file: Path) -> None:
    """Delete every message; in-flight ones are the worker's failures, whose receipts it wrote down."""
    sqs = aws_client("sqs", stack.aws_endpoint_url, stack.aws_region)
    for record in _records(seen_file):
        # A receipt of a deleted message, or one superseded by a later receive, is refused: fine.
        with contextlib.suppress(ClientError):
            _release(stack, record["receiptHandle"])
    for url in stack.running_info().queues.values():
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        assert _queue_counts(stack, next(k for k, v in stack.running_info().queues.items() if v == url)) == (
            0,
            0,
        )
    seen_file.unlink(missing_ok=True)


@pytest.fixture
def clean_queues(fake_stack: LocalStack, seen_file: Path) -> None:
    _empty_queues(fake_stack, seen_file)


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

    # When its visibility timeout is over (forced here) and the queue is drained again
    _release(fake_stack, failed["receiptHandle"])
    again = fake_stack.drain_queues()
    # Then the failed message comes back (receive count 2) and fails again; on its next receive
    # it exceeds maxReceiveCount (2) and moto's redrive moves it to the DLQ, as SQS does
    assert (again.received, again.deleted) == (1, 0)
    retried = _records(seen_file)[-1]
    assert retried["messageId"] == failed["messageId"]
    assert retried["attributes"]["ApproximateReceiveCount"] == "2"
    _release(fake_stack, retried["receiptHandle"])
    assert fake_stack.drain_queues().received == 0
    assert _queue_counts(fake_stack, "WorkQueue") == (0, 0)
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
def test_schedule_endpoint_runs_the_same_path_over_http(fake_stack: LocalStack, seen_file: Path) -> None:
    for base in (fake_stack.running_info().local_admin_url, f"{fake_stack.api_url}/_local"):
        _empty_queues(fake_stack, seen_file)
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
