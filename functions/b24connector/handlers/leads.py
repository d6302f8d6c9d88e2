"""LeadsFunction (direct invoke): one page of a portal's leads, per ARCHITECTURE.md section 2."""

from __future__ import annotations

import time
from functools import cache
from typing import TYPE_CHECKING, Any

from b24connector.handlers import _services, import_done
from b24connector.leads import (
    UPSTREAM_ERROR,
    CursorCodec,
    LeadsError,
    LeadsReader,
    VaultPortalOpener,
    parse_request,
)
from b24connector.observability import count, logger, metrics
from b24connector.problems import safe_traceback
from b24connector.settings import Settings, get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Leave this much of the invocation for answering: the reader stops starting requests after it.
ANSWER_RESERVE_SECONDS = 3.0
# Tokens the shared pacer reserves per DynamoDB write (see reader()).
PACING_LEASE_SIZE = 1


@cache
def reader(conf: Settings) -> LeadsReader:
    """The leads use case, wired once per container."""
    # Imported on the first invocation: the REST client and the secret reader load requests and the
    # Powertools parameters utility, which invalid requests and other handlers never need.
    from b24connector import credentials  # noqa: PLC0415
    from b24connector.bitrix24.listing import FastLister  # noqa: PLC0415
    from b24connector.bitrix24.pacing import LocalTokenBucket, Pacer  # noqa: PLC0415
    from b24connector.bitrix24.rest import RestClient  # noqa: PLC0415
    from b24connector.bitrix24.transport import shared_session  # noqa: PLC0415
    from b24connector.shared_pacing import DynamoTokenBucket  # noqa: PLC0415

    store = _services.vault(conf).portals
    pacer: Pacer
    if conf.rate_limit_shared:
        # Concurrent instances share the portal's request budget through the RateLimitTable. One token
        # per write: a lease's unused tokens die with the invocation, and a parallel export runs many
        # short invocations (5 parts x 8 requests wasted ~6 of the 47 usable tokens with leases of 5).
        pacer = DynamoTokenBucket.from_settings(
            conf,
            lease_size=PACING_LEASE_SIZE,
            on_fallback=lambda reason: logger.warning("shared pacing off", extra={"reason": reason}),
        )
    else:
        pacer = LocalTokenBucket(conf.rate_limit_per_second, conf.rate_limit_burst)
    rest = RestClient.from_settings(conf, session=shared_session(), pacer=pacer)
    return LeadsReader(
        VaultPortalOpener(store, _services.coordinator(conf)),
        FastLister(rest),
        CursorCodec(lambda: credentials.cursor_signing_key(conf)),
    )


def read_leads(event: Any, deadline: float) -> dict[str, Any]:
    """Validate the request and read one page; expected failures become the contract's error answer."""
    conf = get_settings()
    try:
        request = parse_request(event, _services.portal_policy(conf).normalize)
        page = reader(conf).read(request, deadline=deadline)
    except LeadsError as exc:
        logger.info("leads refused", extra={"code": exc.code})
        count(f"Leads{exc.code.title().replace('_', '')}")
        return exc.answer()
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
        return LeadsError(UPSTREAM_ERROR, f"internal failure (request {context.aws_request_id})").answer()


# Last statement: the import is complete (see b24connector.handlers).
import_done()
