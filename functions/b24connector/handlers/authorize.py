"""AuthorizeFunction: GET /authorize?domain=PORTAL -> 302 to the portal's consent page, with a state cookie."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import correlation_paths

from b24connector import wiring
from b24connector.handlers import import_done
from b24connector.observability import count, logger, metrics
from b24connector.settings import get_settings
from b24connector.web.errors import serve
from b24connector.web.http import HttpProblem, HttpRequest, HttpResponse, redirect, set_cookie

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


def start_authorization(request: HttpRequest) -> HttpResponse:
    """Validate the portal, remember a fresh state, and send the browser to the portal's consent page."""
    if request.method != "GET":
        raise HttpProblem(405, "method_not_allowed", "Use GET.")
    conf = get_settings()
    start = wiring.authorization_flow(conf).start(request.query.one("domain"))
    count("AuthorizationStarted")
    return redirect(
        start.redirect_url,
        cookies=[set_cookie(conf.state_cookie_name, start.browser_nonce, max_age=start.max_age)],
    )


@logger.inject_lambda_context(
    log_event=False, correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """HttpApi payload 2.0 in, redirect or error page out."""
    return serve(event, start_authorization, logger=logger, count=count)


# Last statement: the import is complete (see b24connector.handlers).
import_done()
