"""InstallFunction: POST /install (the install page Bitrix24 frames) and POST /events (app events)."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import correlation_paths

from b24connector import wiring
from b24connector.events.lead_changes import is_lead_event, parse_lead_delivery
from b24connector.handlers import import_done
from b24connector.install import (
    EVENT_UNINSTALL,
    JOURNALED_EVENTS,
    Outcome,
    parse_install_event,
    parse_install_page,
    parse_uninstall_event,
)
from b24connector.observability import count, logger, metrics
from b24connector.problems import Problem, invalid
from b24connector.settings import Settings, get_settings
from b24connector.web.errors import serve
from b24connector.web.http import Fields, HttpProblem, HttpRequest, HttpResponse, json_response
from b24connector.web.pages import install_finish_page

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

EVENTS_PATH = "/events"
INSTALL_PATH = "/install"


def _event(conf: Settings, form: Fields) -> HttpResponse:
    payload = form.nested()
    name = str(payload.get("event") or "").upper()
    if not name:
        raise invalid("event_missing", "The request names no event.")
    if is_lead_event(name):
        return _lead_event(conf, payload)
    use_case = wiring.installer(conf)
    if name in JOURNALED_EVENTS:
        # Delivered once, never again: accepted durably first, verified and applied by LifecycleFunction.
        event = parse_install_event(payload, wiring.portal_policy(conf), now=use_case.now())
        use_case.accept(event)
        count("InstallEventAccepted")
        logger.info("install event accepted", extra={"member_id": event.member_id, "event": name})
        return json_response(200, {"status": "accepted"})
    if name == EVENT_UNINSTALL:
        notice = parse_uninstall_event(payload)
        outcome = use_case.uninstall(notice)
        count("AppUninstalled" if outcome is Outcome.UNINSTALLED else "UninstallQueued")
        logger.info(
            "uninstall",
            extra={"member_id": notice.member_id, "clean": notice.clean, "outcome": outcome.value},
        )
        if outcome is Outcome.UNINSTALL_QUEUED:
            # Unproven by the stored application token: Bitrix24 confirms it first (LifecycleFunction).
            return json_response(202, {"status": "accepted", "verification": "pending"})
        return json_response(200, {"status": "success"})
    raise invalid("event_unsupported", "This event is not handled here.")


def _lead_event(conf: Settings, payload: dict[str, Any]) -> HttpResponse:
    """ONCRMLEAD*: authenticated by the stored application token, recorded once, published from the stream."""
    delivery = parse_lead_delivery(payload)
    try:
        outcome = wiring.lead_desk(conf).accept(delivery)
    except Problem:
        count("LeadEventRefused")
        logger.warning("lead event refused", extra={"member_id": delivery.member_id, "event": delivery.event})
        raise
    count(
        {"accepted": "LeadEventAccepted", "duplicate": "LeadEventDuplicate"}.get(
            outcome.value, "LeadEventIgnored"
        )
    )
    return json_response(200, {"status": outcome.value})


def _install_page(conf: Settings, request: HttpRequest, form: Fields) -> HttpResponse:
    use_case = wiring.installer(conf)
    grant = parse_install_page(
        request.query.single_values(), form.single_values(), wiring.portal_policy(conf), now=use_case.now()
    )
    installed = use_case.install_page(grant)
    count(
        {
            Outcome.STORED: "AppInstalled",
            Outcome.KEPT: "AppInstallPageSeen",
            Outcome.REFUSED: "AppInstallPageRefused",
        }.get(installed.outcome, "AppInstallPageSeen")
    )
    logger.info(
        "install page",
        extra={
            "member_id": installed.member_id,
            "domain": installed.domain,
            "outcome": installed.outcome.value,
            "role": installed.role,
        },
    )
    return install_finish_page(
        conf.install_finish_script_url, installed.domain, admin_required=installed.outcome is Outcome.REFUSED
    )


def route(request: HttpRequest) -> HttpResponse:
    """POST /install: install page (or an event posted there); POST /events: app events."""
    if request.method != "POST":
        raise HttpProblem(405, "method_not_allowed", "Use POST.")
    conf = get_settings()
    if request.path.endswith(EVENTS_PATH):
        return _event(conf, request.form())
    if request.path.endswith(INSTALL_PATH):
        form = request.form()
        # Bitrix24 posts ONAPPINSTALL / ONAPPUSERREADY to the install URL (docs/bitrix24-facts.md#f-app-1).
        if "event" in form.names():
            return _event(conf, form)
        return _install_page(conf, request, form)
    raise HttpProblem(404, "route_unknown", "Unknown path.")


@logger.inject_lambda_context(
    log_event=False, correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """HttpApi payload 2.0 in; JSON for events (on /events or the install URL), HTML for the install page."""
    if str(event.get("rawPath", "")).endswith(EVENTS_PATH) or _posts_an_event(event):
        return serve(event, route, logger=logger, count=count, answer_as="json")
    return serve(event, route, logger=logger, count=count, answer_as="html")


def _posts_an_event(event: dict[str, Any]) -> bool:
    """True when the form names an `event` (Bitrix24 posts ONAPPINSTALL/ONAPPUSERREADY to the install URL)."""
    body = event.get("body")
    if not isinstance(body, str):
        return False
    head = body[:8192]
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(head[: len(head) // 4 * 4], validate=False)
        except ValueError:
            return False
    else:
        raw = head.encode("utf-8", "surrogatepass")
    return raw.startswith(b"event=") or b"&event=" in raw


# Last statement: the import is complete (see b24connector.handlers).
import_done()
