"""The emulated portal: consent page, /rest/ methods, and the admin API under /_emulator/."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from bitrix24_emulator.faults import Fault
from bitrix24_emulator.pages import code_page, consent_page, error_page, simple_page
from bitrix24_emulator.rest import OPERATION_LIMIT, QUERY_LIMIT, RestAnswer, RestEngine, normalize_method
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.users import SESSION_COOKIE, get_user, parse_user_id
from bitrix24_emulator.wsgi import html_response, json_response, request_params

_HTML_ERROR = (
    "<!DOCTYPE html><html><head><title>{status} Error</title></head>"
    "<body><h1>{status}</h1><p>The server is temporarily unable to service your request.</p></body></html>"
)

AdminHandler = Callable[[Request], Response]


class PortalApp:
    """WSGI app of the portal (every listener of the portal shares it)."""

    def __init__(self, state: EmulatorState, admin: AdminHandler) -> None:
        self.state = state
        self.engine = RestEngine(state)
        self.admin = admin

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI entry point."""
        request = Request(environ)
        response = self.dispatch(request, int(environ.get("SERVER_PORT") or 0))
        result: Iterable[bytes] = response(environ, start_response)
        return result

    def dispatch(self, request: Request, listener_port: int) -> Response:
        """Route one request."""
        path = request.path
        if path == "/_emulator" or path.startswith("/_emulator/"):
            return self.admin(request)
        is_portal_path = path.startswith(("/rest/", "/oauth/"))
        if is_portal_path and listener_port in self.state.redirected_ports:
            return self._moved(request)
        if path.startswith("/rest/"):
            return self._rest(request, normalize_method(path[len("/rest/") :]))
        if path.rstrip("/") == "/oauth/authorize":
            return self._authorize(request)
        if path == "/":
            return html_response(
                simple_page("Bitrix24 emulator", "<p>REST lives under <code>/rest/</code>.</p>")
            )
        return html_response(error_page("Not found", "The page was not found."), 404)

    def _moved(self, request: Request) -> Response:
        """A renamed portal answers its old address with 302 to the new one (same path and query)."""
        with self.state.lock:
            if request.path.startswith("/rest/"):
                self.state.stats.request_started(self.state.clock.now())
                self.state.stats.request_finished(302, None)
            else:
                self.state.stats.http_status[302] += 1
            location = f"{self.state.portal_url}{request.full_path.rstrip('?')}"
        response = html_response(error_page("Moved", "The portal address has changed."), 302)
        response.headers["Location"] = location
        return response

    # --- consent -----------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> Response:
        state = self.state
        params = request_params(request, accept_json=False)
        client_id = str(params.get("client_id") or "")
        raw_state = params.get("state")
        app_state = raw_state if isinstance(raw_state, str) else None
        with state.lock:
            known = client_id == state.config.client_id
            installed = state.installed or not state.uninstalled_count
        if not known:
            return html_response(error_page("Authorization error", "The application was not found."), 400)
        if not installed:
            return html_response(error_page("Authorization error", "The application is not installed."), 400)
        with state.lock:
            show_form = state.config.consent_form
        # rest.authorize: a logged-in user is redirected at once, no form (consent_form restores one).
        # Who is logged in: the portal session cookie GET /_emulator/login set, else the default user.
        try:
            session_user = parse_user_id(request.cookies.get(SESSION_COOKIE), state.config.user_id)
            get_user(state.config, session_user)
        except ValueError:
            return html_response(error_page("Authorization error", "The portal session is not valid."), 400)
        if request.method == "POST" or not show_form:
            code, location = state.approve(app_state, session_user)
            if not location:
                return html_response(code_page(code))
            response = html_response(error_page("Redirect", "Continue to the application."), 302)
            response.headers["Location"] = location
            return response
        with state.lock:
            page = consent_page(
                app_name=state.config.client_id,
                client_id=client_id,
                state=app_state,
                portal_domain=state.portal_domain,
                scope=state.config.scope,
            )
        return html_response(page)

    # --- REST --------------------------------------------------------------------------------------

    def _rest(self, request: Request, method: str) -> Response:
        state = self.state
        with state.lock:
            arrival = state.clock.now()
            state.stats.request_started(arrival)
            fault = state.faults.take("rest", method)
        status: int = 500
        error: str | None = "INTERNAL_SERVER_ERROR"
        try:
            if fault is not None:
                response = self._fault_answer(fault, method, arrival)
                if response is not None:
                    status, error = response.status_code, fault.error or fault.kind
                    return response
            params = request_params(request, accept_json=True)
            client_key = request.remote_addr or "unknown"
            with state.lock:
                answer = self.engine.handle(method, params, client_key, arrival)
                delay = state.config.latency_seconds + answer.modeled_seconds * state.config.time_scale
            if delay > 0:
                time.sleep(delay)
            status, error = answer.status, answer.error
            return json_response(answer.body, answer.status)
        finally:
            with state.lock:
                state.stats.request_finished(status, error)
            # Events raised by this call go to the portal's queue: sent after the answer, once each.
            state.flush_pending_deliveries()

    def _fault_answer(self, fault: Fault, method: str, arrival: float) -> Response | None:
        """Build the scripted answer; None means carry on normally (after a `slow` delay)."""
        state = self.state
        kind = fault.kind
        if kind == "slow":
            time.sleep(fault.delay)
            return None
        if kind == "html":
            status = fault.status or 503
            return html_response(_HTML_ERROR.format(status=status), status)
        simple: dict[str, tuple[int, str, str]] = {
            "server_error": (fault.status or 500, "INTERNAL_SERVER_ERROR", "Internal server error"),
            "query_limit": (503, *QUERY_LIMIT),
            "expired_token": (401, "expired_token", "The access token provided has expired."),
            "invalid_token": (401, "invalid_token", "Unable to get application by token"),
            "overload": (503, "OVERLOAD_LIMIT", "REST API is blocked due to overload."),
            "portal_deleted": (state.config.portal_deleted_status, "PORTAL_DELETED", "Portal was deleted"),
            "operation_time_limit": (429, *OPERATION_LIMIT),
            "error": (fault.status or 400, fault.error or "", fault.error_description or ""),
        }
        status, code, description = simple[kind]
        # Error answers carry no `time` block (429 included) unless error_time_block asks for the older reading.
        answer = RestAnswer(status, {"error": code, "error_description": description})
        with state.lock:
            if state.config.error_time_block:
                answer.body["time"] = self.engine.time_block(method, arrival, 0.0)
                if kind == "operation_time_limit":
                    answer.body["time"]["operating_reset_at"] = int(state.clock.now() + fault.delay)
        return json_response(answer.body, status)
