"""PublisherFunction (DynamoDB streams of PortalsTable and LeadEventsTable): events onto the bus."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer

from b24connector import wiring
from b24connector.events.publisher import LEADS, PORTALS, StreamRecord
from b24connector.handlers import import_done
from b24connector.observability import logger, metrics
from b24connector.problems import safe_traceback
from b24connector.settings import Settings, get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

_deserializer = TypeDeserializer()


def _image(raw: Any) -> dict[str, Any] | None:
    """The image's attributes as Python values; binary ones (token ciphertext) are never even decoded."""
    if not isinstance(raw, dict):
        return None
    return {
        name: _plain(_deserializer.deserialize(value))  # type: ignore[arg-type]
        for name, value in raw.items()
        if isinstance(value, dict) and not {"B", "BS"} & set(value)
    }


def _plain(value: Any) -> Any:
    """DynamoDB numbers (Decimal) as int or float; lists and maps element by element."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _table_of(conf: Settings, source_arn: str) -> str:
    # arn:aws:dynamodb:<region>:<account>:table/<name>/stream/<label>
    name = source_arn.partition(":table/")[2].partition("/")[0]
    if name == conf.lead_events_table:
        return LEADS
    return PORTALS if name == conf.portals_table else ""


def records_of(conf: Settings, event: dict[str, Any]) -> list[StreamRecord]:
    """The batch's stream records in order, images deserialized."""
    records = []
    for raw in event.get("Records") or []:
        change = raw.get("dynamodb") or {}
        records.append(
            StreamRecord(
                sequence=str(change.get("SequenceNumber", "")),
                table=_table_of(conf, str(raw.get("eventSourceARN", ""))),
                name=str(raw.get("eventName", "")),
                old=_image(change.get("OldImage")),
                new=_image(change.get("NewImage")),
            )
        )
    return records


# Not Powertools' BatchProcessor: it handles records one by one, and PutEvents takes ten at a time; a
# stream batch is published in order and answered with the first sequence number not published, which
# is the batchItemFailures contract for streams (Lambda retries from that record).
@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Stream batch in, `batchItemFailures` (at most the first unpublished record) out."""
    conf = get_settings()
    records = records_of(conf, event)
    try:
        failed = wiring.stream_publisher(conf).publish(records)
    except Exception as exc:
        # Logged by type and place only; the whole batch is retried (then bisected, then dead-lettered).
        logger.warning("publishing failed; batch retried", extra=safe_traceback(exc))
        failed = records[0].sequence if records else None
    return {"batchItemFailures": [{"itemIdentifier": failed}] if failed else []}


# Last statement: the import is complete (see b24connector.handlers).
import_done()
