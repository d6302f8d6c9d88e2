"""InstallFunction: POST /install (the install page Bitrix24 frames) and POST /events (app events)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import correlation_paths

from b24connector.handlers import _services, import_done
from b24connector.install import (
    EVENT_INSTALL,
    EVENT_UNINSTALL,
    Installer,
    parse_install_event,
    parse_install_page,
    parse_uninstall_event,
)
from b24connector.observability import count, logger, metrics
from b24connector.problems import invalid
from b24connector.settings import Settings, get_settings
from b24connector.web.errors import serve
from b24connector.web.http import Fields, HttpProblem, HttpRequest, HttpResponse, json_response
from b24connector.web.pages import install_finish_page

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

EVENTS_PATH = "/events"
INSTALL_PATH = "/install"


@cache
def installer(conf: Settings) -> Installer:
    """The install use case, wired once per container."""
    return Installer(
        _services.portal_policy(conf),
        _services.oauth_client(conf),
        _services.vault(conf).portals,
        client_id=conf.client_id,
    )


def _event(conf: Settings, form: Fields) -> HttpResponse:
    payload = form.nested()
    name = str(payload.get("event") or "").upper()
    use_case = installer(conf)
    if name == EVENT_INSTALL:
        grant = parse_install_event(payload, _services.portal_policy(conf), now=use_case.now())
        installed = use_case.install(grant)
        count("AppInstalled" if installed.stored else "AppInstallReplayed")
        logger.info(
            "app installed (event)",
            extra={
                "member_id": installed.member_id,
                "domain": installed.domain,
                "version": installed.version,
            },
        )
    elif name == EVENT_UNINSTALL:
        notice = parse_uninstall_event(payload)
        use_case.uninstall(notice)
        count("AppUninstalled")
        logger.info("app uninstalled", extra={"member_id": notice.member_id, "clean": notice.clean})
    elif not name:
        raise invalid("event_missing", "The request names no event.")
    else:
        raise invalid("event_unsupported", "This event is not handled here.")
    return json_response(200, {"status": "success"})


def _install_page(conf: Settings, request: HttpRequest, form: Fields) -> HttpResponse:
    use_case = installer(conf)
    grant = parse_install_page(
        request.query.single_values(), form.single_values(), _services.portal_policy(conf), now=use_case.now()
    )
    installed = use_case.install(grant)
    count("AppInstalled" if installed.stored else "AppInstallPageSeen")
    logger.info(
        "app installed (page)",
        extra={
            "member_id": installed.member_id,
            "domain": installed.domain,
            "version": installed.version,
            "stored": installed.stored,
        },
    )
    return install_finish_page(conf.install_finish_script_url, installed.domain)


def route(request: HttpRequest) -> HttpResponse:
    """POST /install: install page (or an event posted there); POST /events: app events."""
    if request.method != "POST":
        raise HttpProblem(405, "method_not_allowed", "Use POST.")
    conf = get_settings()
    if request.path.endswith(EVENTS_PATH):
        return _event(conf, request.form())
    if request.path.endswith(INSTALL_PATH):
        form = request.form()
        # API-only apps may name the install URL as their event handler too (fact sheet 3.1).
        if "event" in form.names():
            return _event(conf, form)
        return _install_page(conf, request, form)
    raise HttpProblem(404, "route_unknown", "Unknown path.")


@logger.inject_lambda_context(
    log_event=False, correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """HttpApi payload 2.0 in; an HTML page for /install, JSON for /events."""
    if str(event.get("rawPath", "")).endswith(EVENTS_PATH):
        return serve(event, route, logger=logger, count=count, answer_as="json")
    return serve(event, route, logger=logger, count=count, answer_as="html")


# Last statement: the import is complete (see b24connector.handlers).
import_done()
