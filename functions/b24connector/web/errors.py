"""The one place that turns a use case's outcome or failure into an HTTP answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from b24connector.problems import Problem, ProblemKind, safe_traceback
from b24connector.web.http import (
    DEFAULT_MAX_BODY_BYTES,
    HttpProblem,
    HttpRequest,
    HttpResponse,
    json_response,
)
from b24connector.web.pages import problem_page

_STATUS = {
    ProblemKind.INVALID: 400,
    ProblemKind.FORBIDDEN: 403,
    ProblemKind.NOT_FOUND: 404,
    ProblemKind.UPSTREAM_REJECTED: 502,
    ProblemKind.UNAVAILABLE: 503,
}
INTERNAL_ERROR = "internal_error"


class LogSink(Protocol):
    """The slice of a Powertools Logger this module uses."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None: ...

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None: ...

    def error(self, msg: object, *args: object, **kwargs: Any) -> None: ...


def status_for(problem: Problem) -> int:
    """The HTTP status of an expected failure."""
    if isinstance(problem, HttpProblem):
        return problem.status
    return _STATUS[problem.kind]


def serve(
    event: Mapping[str, Any],
    handle: Callable[[HttpRequest], HttpResponse],
    *,
    logger: LogSink,
    answer_as: Literal["html", "json"] = "html",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cookies_on_problem: tuple[str, ...] = (),
    count: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Parse the event, run `handle`, and map every failure to a 4xx/5xx answer without internals."""
    request_id = str((event.get("requestContext") or {}).get("requestId") or "")
    try:
        request = HttpRequest.from_event(event, max_body_bytes=max_body_bytes)
        response = handle(request)
    except Problem as problem:
        status = status_for(problem)
        log = logger.warning if status >= 500 else logger.info
        log("request refused", extra={"reason": problem.reason, "status": status})
        response = render_problem(status, problem.reason, problem.message, request_id, answer_as)
        response.cookies.extend(cookies_on_problem)
        if count is not None:
            count("RequestRefused" if status < 500 else "RequestFailed")
    except Exception as exc:
        # No message, no locals: an exception text from a library could quote a request body.
        logger.error("unhandled error", extra={"status": 500, **safe_traceback(exc)})
        response = render_problem(
            500,
            INTERNAL_ERROR,
            "An unexpected error occurred. Please try again later.",
            request_id,
            answer_as,
        )
        response.cookies.extend(cookies_on_problem)
        if count is not None:
            count("RequestFailed")
    return response.to_event()


def render_problem(
    status: int, reason: str, message: str, request_id: str, answer_as: Literal["html", "json"]
) -> HttpResponse:
    """An error answer as an HTML page or as JSON, always with the reason code."""
    if answer_as == "json":
        response = json_response(
            status,
            {"status": "error", "error": {"code": reason, "message": message}, "request_id": request_id},
        )
        response.headers["X-Reason-Code"] = reason
        return response
    return problem_page(status, reason, message, request_id=request_id)
