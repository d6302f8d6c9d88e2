"""Lambda's DynamoDB stream event source mapping, reproduced against the moto server.

Each bound table's stream is read from its start (TRIM_HORIZON: the local tables are new), records
that pass the mapping's FilterCriteria are handed to the function in batches of BatchSize with the
record shape Lambda builds (plus `eventSourceARN`). With ReportBatchItemFailures, the first
`itemIdentifier` (a sequence number) is where the next batch starts again; a function error retries
the whole batch. Unlike Lambda, a failing batch is retried on the next drain (never bisected, never
sent to the on-failure destination): tests see the retry rather than a dead letter.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from local_stack.event_sources import BackgroundPoller, BatchOutcome, DrainReport, Invoke
from local_stack.template import StreamSource

_log = logging.getLogger("local_stack.streams")


@dataclass(slots=True)
class StreamBinding:
    """A stream source with its stream ARN and the reader's position per shard."""

    source: StreamSource
    stream_arn: str
    iterators: dict[str, str | None] = field(default_factory=dict)
    pending: deque[dict[str, Any]] = field(default_factory=deque)


def matches(pattern: Any, value: Any) -> bool:
    """EventBridge-style filter: every key of the pattern matches (lists are allowed values)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(matches(p, value.get(k)) for k, p in pattern.items())
    if isinstance(pattern, list):
        return value in pattern
    return bool(pattern == value)


def _json_binaries(value: Any) -> Any:
    """Binary attribute values as Lambda's JSON event carries them (base64 text)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: _json_binaries(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_binaries(v) for v in value]
    return value


def lambda_record(record: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """A record as GetRecords returned it (boto3), turned into what Lambda's stream event carries."""
    change = _json_binaries(dict(record.get("dynamodb") or {}))
    created = change.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        change["ApproximateCreationDateTime"] = int(created.timestamp())
    return {
        **record,
        "awsRegion": region,
        "eventVersion": "1.1",
        "dynamodb": change,
        "eventSourceARN": stream_arn,
    }


class StreamPoller(BackgroundPoller):
    """Reads the bound streams and feeds their functions, on demand or in a background thread."""

    kind = "stream"
    log = _log

    def __init__(
        self, bindings: list[StreamBinding], streams_client: Any, invoke: Invoke, *, region: str
    ) -> None:
        self.bindings = bindings
        self.streams = streams_client
        self.invoke = invoke
        self.region = region
        self._lock = threading.Lock()
        super().__init__()

    def _fill(self, binding: StreamBinding) -> None:
        if not binding.iterators:
            shards = self.streams.describe_stream(StreamArn=binding.stream_arn)["StreamDescription"]["Shards"]
            for shard in shards:
                binding.iterators[shard["ShardId"]] = self.streams.get_shard_iterator(
                    StreamArn=binding.stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
        for shard, start in list(binding.iterators.items()):
            iterator = start
            while iterator is not None and len(binding.pending) < binding.source.batch_size:
                answer = self.streams.get_records(ShardIterator=iterator, Limit=1000)
                iterator = answer.get("NextShardIterator")
                records = answer.get("Records") or []
                filters = binding.source.filters
                binding.pending.extend(
                    r for r in records if not filters or any(matches(f, r) for f in filters)
                )
                if not records:
                    break
            binding.iterators[shard] = iterator

    def _batch(self, binding: StreamBinding) -> BatchOutcome | None:
        self._fill(binding)
        if not binding.pending:
            return None
        source = binding.source
        batch = [binding.pending[i] for i in range(min(source.batch_size, len(binding.pending)))]
        event = {"Records": [lambda_record(r, binding.stream_arn, self.region) for r in batch]}
        outcome = self.invoke(source.function, event)
        done = len(batch)
        if outcome.function_error:
            done = 0
        elif source.report_batch_item_failures:
            answer = outcome.json()
            failures = answer.get("batchItemFailures") if isinstance(answer, dict) else None
            sequences = [str(r["dynamodb"]["SequenceNumber"]) for r in batch]
            failed = [str(f.get("itemIdentifier")) for f in failures or [] if isinstance(f, dict)]
            if failed:
                first = min((sequences.index(s) for s in failed if s in sequences), default=0)
                done = first
        for _ in range(done):
            binding.pending.popleft()
        return BatchOutcome(
            queue=source.table,
            function=source.function,
            received=len(batch),
            deleted=done,
            failed_message_ids=[str(r["dynamodb"]["SequenceNumber"]) for r in batch[done:]],
            function_error=outcome.function_error,
        )

    def drain(self) -> DrainReport:
        """Feed every new record of every bound stream to its function; a failing batch waits for the next drain."""
        report = DrainReport()
        with self._lock:
            for binding in self.bindings:
                if not binding.source.enabled:
                    continue
                while not self._stop.is_set():
                    outcome = self._batch(binding)
                    if outcome is None:
                        break
                    report.batches.append(outcome)
                    if outcome.deleted < outcome.received:
                        break  # retried on the next drain, as Lambda retries from the failed record
        return report
