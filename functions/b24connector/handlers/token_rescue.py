"""TokenRescueFunction (SQS TokenRescueQueue): commit refreshed pairs whose first commit failed."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from b24connector.handlers import _services, import_done
from b24connector.observability import count, logger, metrics
from b24connector.problems import safe_traceback
from b24connector.settings import Settings, get_settings
from b24connector.token_refresh.rescue import RescueWorker

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


def log_failure(message_id: str, exc: BaseException) -> None:
    """Log a failure by type and location only (exception texts stay out of logs)."""
    logger.error("token rescue failed", extra={"message_id": message_id, **safe_traceback(exc)})


@cache
def rescue_worker(conf: Settings) -> RescueWorker:
    """The rescue use case, wired once per container."""
    return RescueWorker(_services.coordinator(conf), on_error=log_failure)


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch in, `batchItemFailures` out: a failed rescue is retried, then kept in the DLQ."""
    records = event.get("Records") or []
    report = rescue_worker(get_settings()).handle(records)
    logger.info(
        "rescue batch", extra={"messages": len(records), "retry": len(report.retry), **report.outcomes}
    )
    if report.retry:
        count("RescueRetried", len(report.retry))
    return report.answer()


# Last statement: the import is complete (see b24connector.handlers).
import_done()
