"""RefreshWorkerFunction (SQS RefreshQueue): refresh each due portal once; report retryable failures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from b24connector import wiring
from b24connector.handlers import import_done
from b24connector.observability import count, logger, metrics
from b24connector.settings import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch in, `batchItemFailures` out (the event source has ReportBatchItemFailures on)."""
    records = event.get("Records") or []
    report = wiring.refresh_worker(get_settings()).handle(records, context.get_remaining_time_in_millis)
    logger.info(
        "refresh batch", extra={"messages": len(records), "retry": len(report.retry), **report.outcomes}
    )
    if report.retry:
        count("RefreshRetried", len(report.retry))
    if report.deferred:
        count("RefreshDeferred", report.deferred)
    return report.answer()


# Last statement: the import is complete (see b24connector.handlers).
import_done()
