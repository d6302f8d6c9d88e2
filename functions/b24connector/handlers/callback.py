"""CallbackFunction: GET /callback from the portal -> code exchanged once, grant stored, cookie cleared."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import correlation_paths

from b24connector import wiring
from b24connector.authorization import CallbackParams
from b24connector.handlers import import_done
from b24connector.observability import count, logger, metrics
from b24connector.settings import get_settings
from b24connector.web.errors import serve
from b24connector.web.http import HttpProblem, HttpRequest, HttpResponse, clear_cookie, redirect
from b24connector.web.pages import connected_page

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


def finish_authorization(request: HttpRequest) -> HttpResponse:
    """Check the callback against its state and cookie, exchange the code, store the grant."""
    if request.method != "GET":
        raise HttpProblem(405, "method_not_allowed", "Use GET.")
    conf = get_settings()
    query = request.query
    params = CallbackParams(
        code=query.one("code") or "",
        state=query.one("state") or "",
        domain=query.one("domain") or "",
        member_id=query.one("member_id") or "",
        server_domain=query.one("server_domain"),
        scope=query.one("scope"),
    )
    connected = wiring.authorization_flow(conf).complete(params, request.cookie(conf.state_cookie_name))
    count("AuthorizationCompleted")
    logger.info("portal connected", extra={"member_id": connected.member_id, "domain": connected.domain})
    cookies = [clear_cookie(conf.state_cookie_name)]
    if conf.success_redirect_url:
        return redirect(conf.success_redirect_url, cookies=cookies)
    return connected_page(connected.domain, cookies=cookies)


@logger.inject_lambda_context(
    log_event=False, correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """HttpApi payload 2.0 in, page or redirect out; the state cookie is cleared either way."""
    cookie_name = get_settings().state_cookie_name
    return serve(
        event,
        finish_authorization,
        logger=logger,
        count=count,
        cookies_on_problem=(clear_cookie(cookie_name),),
    )


# Last statement: the import is complete (see b24connector.handlers).
import_done()
