"""Lambda's SQS event source mapping and EventBridge Scheduler, reproduced against the moto server.

SQS: receive up to BatchSize messages (with all attributes), invoke with the Records batch Lambda
builds, then delete what succeeded. A function error deletes nothing. With ReportBatchItemFailures,
``batchItemFailures`` keeps the listed messages (they reappear after the visibility timeout and go
to the DLQ after maxReceiveCount, as moto enforces the redrive policy); a malformed partial answer
fails the whole batch, as Lambda treats it.
Scheduler: the target gets the schedule's ``Input`` with the ``<aws.scheduler.*>`` context
attributes substituted, or ``{}`` when the schedule has no Input.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from local_stack.runtime import InvocationResult
from local_stack.template import ACCOUNT_ID, Schedule, SqsSource

_log = logging.getLogger("local_stack.event_sources")
_SQS_RECEIVE_MAX = 10  # ReceiveMessage returns at most 10 per call; Lambda gathers larger batches

Invoke = Callable[[str, Any], InvocationResult]


@dataclass(frozen=True, slots=True)
class QueueBinding:
    """An SQS source with its queue's local identity."""

    source: SqsSource
    queue_url: str
    queue_arn: str


@dataclass(slots=True)
class BatchOutcome:
    """What happened to one batch."""

    queue: str
    function: str
    received: int
    deleted: int
    failed_message_ids: list[str]
    function_error: str | None


@dataclass(slots=True)
class DrainReport:
    """All batches processed by one drain."""

    batches: list[BatchOutcome] = field(default_factory=list)

    @property
    def received(self) -> int:
        """Messages handed to functions."""
        return sum(batch.received for batch in self.batches)

    @property
    def deleted(self) -> int:
        """Messages deleted after success."""
        return sum(batch.deleted for batch in self.batches)

    @property
    def failed(self) -> int:
        """Messages left on their queue."""
        return sum(batch.received - batch.deleted for batch in self.batches)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "received": self.received,
            "deleted": self.deleted,
            "failed": self.failed,
            "batches": [asdict(batch) for batch in self.batches],
        }


def sqs_record(message: dict[str, Any], binding: QueueBinding, region: str) -> dict[str, Any]:
    """One Records[] entry as Lambda builds it from a ReceiveMessage result."""
    attributes = {key: str(value) for key, value in (message.get("Attributes") or {}).items()}
    message_attributes: dict[str, Any] = {}
    for name, attribute in (message.get("MessageAttributes") or {}).items():
        entry: dict[str, Any] = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": attribute.get("DataType", "String"),
        }
        if "StringValue" in attribute:
            entry["stringValue"] = attribute["StringValue"]
        if "BinaryValue" in attribute:
            entry["binaryValue"] = base64.b64encode(attribute["BinaryValue"]).decode()
        message_attributes[name] = entry
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": binding.queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _failed_ids(result: Any, batch_ids: set[str]) -> set[str] | None:
    """Message IDs the function reported as failed; None when the answer is malformed (all fail)."""
    if not isinstance(result, dict) or result.get("batchItemFailures") is None:
        return set()
    failures = result["batchItemFailures"]
    if not isinstance(failures, list):
        return None
    failed: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or identifier not in batch_ids:
            return None
        failed.add(identifier)
    return failed


class BackgroundPoller:
    """What every event source poller shares: `drain()` on demand, or every interval in a daemon thread
    until stop(), as Lambda's pollers run beside the functions."""

    kind = "event source"  # names the poller in its thread and in the log line of a failed poll
    log = _log

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def drain(self) -> DrainReport:
        """Feed everything waiting to the functions; the subclass knows where it waits."""
        raise NotImplementedError

    def _after_drain(self, report: DrainReport) -> None:
        """What a background poll reports after a drain (nothing unless the subclass says)."""

    def start_background(self, interval_seconds: float) -> None:
        """Poll every interval until stop()."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    report = self.drain()
                except Exception:
                    self.log.exception("background %s poll failed", self.kind)
                    continue
                self._after_drain(report)

        self._thread = threading.Thread(target=loop, name=f"{self.kind.lower()}-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background poller (waits for the batch in flight)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


class SqsPoller(BackgroundPoller):
    """Polls the bound queues and feeds their functions, on demand or in a background thread."""

    kind = "SQS"

    def __init__(
        self,
        bindings: list[QueueBinding],
        sqs_client: Any,
        invoke: Invoke,
        *,
        region: str,
        concurrency: int = 4,
    ) -> None:
        self.bindings = bindings
        self.sqs = sqs_client
        self.invoke = invoke
        self.region = region
        self.concurrency = max(1, concurrency)
        super().__init__()
        self._report_lock = threading.Lock()

    def _receive(self, binding: QueueBinding) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while len(messages) < binding.source.batch_size:
            wanted = min(_SQS_RECEIVE_MAX, binding.source.batch_size - len(messages))
            answer = self.sqs.receive_message(
                QueueUrl=binding.queue_url,
                MaxNumberOfMessages=wanted,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
                WaitTimeSeconds=0,
            )
            received = answer.get("Messages") or []
            messages.extend(received)
            if len(received) < wanted:
                break
        return messages

    def process_batch(self, binding: QueueBinding) -> BatchOutcome | None:
        """Receive one batch and run it through the function; None when the queue had nothing visible."""
        messages = self._receive(binding)
        if not messages:
            return None
        source = binding.source
        event = {"Records": [sqs_record(message, binding, self.region) for message in messages]}
        outcome = self.invoke(source.function, event)
        batch_ids = {message["MessageId"] for message in messages}
        failed: set[str] | None
        if outcome.function_error:
            failed = set(batch_ids)
        elif source.report_batch_item_failures:
            failed = _failed_ids(outcome.json(), batch_ids)
            if failed is None:
                _log.warning(
                    "%s answered a malformed batchItemFailures; the whole batch fails", source.function
                )
                failed = set(batch_ids)
        else:
            failed = set()
        to_delete = [message for message in messages if message["MessageId"] not in failed]
        for start in range(0, len(to_delete), _SQS_RECEIVE_MAX):
            chunk = to_delete[start : start + _SQS_RECEIVE_MAX]
            self.sqs.delete_message_batch(
                QueueUrl=binding.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
        return BatchOutcome(
            queue=source.queue,
            function=source.function,
            received=len(messages),
            deleted=len(to_delete),
            failed_message_ids=sorted(failed),
            function_error=outcome.function_error,
        )

    def _drain_binding(self, binding: QueueBinding, report: DrainReport) -> None:
        while not self._stop.is_set():
            outcome = self.process_batch(binding)
            if outcome is None:
                return
            with self._report_lock:
                report.batches.append(outcome)

    def drain(self) -> DrainReport:
        """Process every visible message of every bound queue until none is visible."""
        report = DrainReport()
        active = [binding for binding in self.bindings if binding.source.enabled]
        if not active:
            return report
        # Lambda runs several pollers per queue; so do we, up to the configured concurrency.
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="sqs-drain") as pool:
            futures = [
                pool.submit(self._drain_binding, binding, report)
                for binding in active
                for _ in range(self.concurrency)
            ]
            for future in futures:
                future.result()
        return report

    def _after_drain(self, report: DrainReport) -> None:
        if report.batches:
            _log.info(
                "sqs: %d messages received, %d deleted, %d left for retry",
                report.received,
                report.deleted,
                report.failed,
            )


def schedule_event(
    schedule: Schedule,
    schedule_input: str | None,
    region: str,
    stack_name: str,
    execution_id: str | None = None,
) -> Any:
    """The payload EventBridge Scheduler delivers for one firing (schedule_input: the resolved Input)."""
    if schedule_input is None:
        return {}
    now = datetime.now(UTC).replace(microsecond=0)
    replacements = {
        "<aws.scheduler.schedule-arn>": (
            f"arn:aws:scheduler:{region}:{ACCOUNT_ID}:schedule/default/{stack_name}-{schedule.name}"
        ),
        "<aws.scheduler.scheduled-time>": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "<aws.scheduler.execution-id>": execution_id or secrets.token_hex(8),
        "<aws.scheduler.attempt-number>": "1",
    }
    text = schedule_input
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, value)
    return json.loads(text)
