"""RefreshFunction (EventBridge Scheduler): queue every portal whose refresh token is due."""

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
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    """Whatever the schedule sends (no Input is configured) is ignored: the due index says what to do."""
    report = wiring.refresh_sweep(get_settings()).run(context.get_remaining_time_in_millis)
    logger.info("refresh sweep", extra=report.as_log())
    count("RefreshDue", report.due)
    count("RefreshQueued", report.queued)
    if report.failed:
        count("RefreshQueueFailed", report.failed)
    return report.as_log()


# Last statement: the import is complete (see b24connector.handlers).
import_done()
