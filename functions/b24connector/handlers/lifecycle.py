"""LifecycleFunction (SQS LifecycleQueue): journaled install events, uninstall checks and event bindings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from b24connector import wiring
from b24connector.handlers import import_done
from b24connector.observability import logger, metrics
from b24connector.problems import safe_traceback
from b24connector.settings import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

# A batch whose every message failed is still a partial answer (all retried), not a function error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def run_record(record: SQSRecord) -> str:
    """One message: decode (decrypting its sealed tokens), run; an exception keeps it for a retry."""
    conf = get_settings()
    try:
        return wiring.lifecycle_worker(conf).run(wiring.journal_codec(conf).decode(record.body))
    except Exception as exc:
        # Logged by type and place only: exception texts stay out of logs.
        logger.warning(
            "lifecycle job will be retried", extra={"message_id": record.message_id, **safe_traceback(exc)}
        )
        raise


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """SQS batch in, `batchItemFailures` out (ReportBatchItemFailures is on for the event source)."""
    return process_partial_response(
        event=event, record_handler=run_record, processor=processor, context=context
    )


# Last statement: the import is complete (see b24connector.handlers).
import_done()
