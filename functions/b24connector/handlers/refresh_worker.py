"""RefreshWorkerFunction (SQS RefreshQueue): refresh each due portal once; report retryable failures."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from b24connector.handlers import _services, import_done
from b24connector.observability import count, logger, metrics
from b24connector.problems import safe_traceback
from b24connector.settings import Settings, get_settings
from b24connector.token_refresh.scheduled import RefreshWorker

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


def log_failure(subject: str, exc: BaseException) -> None:
    """Log a failure by type and location only (exception texts stay out of logs)."""
    logger.error("refresh message failed", extra={"subject": subject, **safe_traceback(exc)})


@cache
def worker(conf: Settings) -> RefreshWorker:
    """The worker use case, wired once per container."""
    return RefreshWorker(_services.coordinator(conf), on_error=log_failure)


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch in, `batchItemFailures` out (the event source has ReportBatchItemFailures on)."""
    records = event.get("Records") or []
    report = worker(get_settings()).handle(records, context.get_remaining_time_in_millis)
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
