"""LeadsFunction (direct invoke): one page of a portal's leads, per docs/architecture.md#leadsfunction-payload."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from b24connector import wiring
from b24connector.changes import is_change_query, parse_changes_request
from b24connector.handlers import import_done
from b24connector.leads import UPSTREAM_ERROR, LeadsRefusal, parse_request
from b24connector.observability import count, logger, metrics
from b24connector.problems import safe_traceback
from b24connector.settings import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Leave this much of the invocation for answering: the reader stops starting requests after it.
ANSWER_RESERVE_SECONDS = 3.0


def _refused(query: str, exc: LeadsRefusal) -> dict[str, Any]:
    """Log and count an expected refusal (metric `<query><Code>`, e.g. LeadsInvalidRequest); its answer."""
    logger.info(f"{query.lower()} refused", extra={"code": exc.code})
    count(f"{query}{exc.code.title().replace('_', '')}")
    return exc.answer()


def read_changes(event: Any, deadline: float) -> dict[str, Any]:
    """A change query (docs/bitrix24-facts.md#f-events-14); expected failures become error answers."""
    conf = get_settings()
    try:
        request = parse_changes_request(event, wiring.portal_policy(conf).normalize)
        answer = wiring.changes_reader(conf).read(request, deadline=deadline)
    except LeadsRefusal as exc:
        return _refused("Changes", exc)
    count("ChangesServed", answer["count"])
    logger.info("changes served", extra={"count": answer["count"], "more": answer["more"]})
    return answer


def read_leads(event: Any, deadline: float) -> dict[str, Any]:
    """Validate the request and read one page; expected failures become the contract's error answer."""
    if is_change_query(event):
        return read_changes(event, deadline)
    conf = get_settings()
    try:
        request = parse_request(event, wiring.portal_policy(conf).normalize)
        page = wiring.leads_reader(conf).read(request, deadline=deadline)
    except LeadsRefusal as exc:
        return _refused("Leads", exc)
    count("LeadsServed", len(page.leads))
    extra: dict[str, Any] = {"count": len(page.leads), "more": page.next_cursor is not None}
    if page.split_cursors is not None:
        extra["parts"] = len(page.split_cursors)
    logger.info("leads served", extra=extra)
    return page.answer()


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    """Direct-invoke JSON in and out; nothing is raised to the caller (errors are answers)."""
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - ANSWER_RESERVE_SECONDS
    try:
        return read_leads(event, deadline)
    except Exception as exc:
        # Unexpected (a bug, or AWS failing in a way no layer mapped): logged without its text.
        logger.error("leads failed", extra=safe_traceback(exc))
        return LeadsRefusal(UPSTREAM_ERROR, f"internal failure (request {context.aws_request_id})").answer()


# Last statement: the import is complete (see b24connector.handlers).
import_done()
