"""The emulated OAuth server (oauth.bitrix.info): /oauth/token/ and /rest/app.info."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from bitrix24_emulator.clock import iso_local
from bitrix24_emulator.faults import Fault
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.tokens import AuthFailure, OAuthFailure
from bitrix24_emulator.wsgi import html_response, json_response, request_params

_HTML_5XX = (
    "<html><head><title>{status} Service Unavailable</title></head><body><h1>{status}</h1></body></html>"
)


class OAuthServerApp:
    """WSGI app of the OAuth server."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI entry point."""
        request = Request(environ)
        response = self.dispatch(request)
        result: Iterable[bytes] = response(environ, start_response)
        return result

    def dispatch(self, request: Request) -> Response:
        """Route one request."""
        path = request.path.rstrip("/")
        if path == "/oauth/token":
            return self._token(request)
        if path in ("/rest/app.info", "/rest/app.info.json"):
            return self._app_info(request)
        return json_response({"error": "NOT_FOUND", "error_description": "Not found"}, 404)

    def _fault(self, kind_target: str) -> Fault | None:
        with self.state.lock:
            return self.state.faults.take("oauth", kind_target)

    def _fault_answer(self, fault: Fault) -> Response | None:
        if fault.kind == "slow":
            time.sleep(fault.delay)
            return None
        if fault.kind == "server_error":
            return json_response(
                {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"},
                fault.status or 500,
            )
        if fault.kind == "html":
            status = fault.status or 503
            return html_response(_HTML_5XX.format(status=status), status)
        if fault.kind == "error":
            return json_response(
                {"error": fault.error, "error_description": fault.error_description or ""},
                fault.status or 400,
            )
        return None  # timeout_after_issue acts after the grant

    # --- /oauth/token/ -----------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        state = self.state
        with state.lock:
            state.stats.token_requests += 1
        fault = self._fault("token")
        if fault is not None:
            answer = self._fault_answer(fault)
            if answer is not None:
                return answer
        # The OAuth server takes query parameters (GET, as documented) or a form body (POST).
        params = request_params(request, accept_json=False)
        grant_type = str(params.get("grant_type") or "")
        try:
            with state.lock:
                body = self._grant(grant_type, params)
                state.stats.token_grants[grant_type] += 1
        except OAuthFailure as failure:
            with state.lock:
                state.stats.token_errors[failure.error] += 1
            return json_response(
                {"error": failure.error, "error_description": failure.description}, failure.status
            )
        if fault is not None and fault.kind == "timeout_after_issue":
            # The grant is spent and the new pair exists, but the client gives up before it arrives.
            time.sleep(fault.delay)
        return json_response(body)

    def _grant(self, grant_type: str, params: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        config = state.config
        if grant_type not in ("authorization_code", "refresh_token"):
            raise OAuthFailure(400, "invalid_request", "Invalid grant_type parameter")
        client_id = str(params.get("client_id") or "")
        if client_id != config.client_id:
            # b24pysdk: an unknown client_id is answered with HTTP 200.
            raise OAuthFailure(200, "wrong_client", "Wrong client")
        secret = str(params.get("client_secret") or "")
        if not hmac.compare_digest(secret.encode(), config.client_secret.encode()):
            raise OAuthFailure(400, "invalid_client", "Invalid client credentials")
        now = state.clock.now()
        if grant_type == "authorization_code":
            code = str(params.get("code") or "")
            if not code:
                raise OAuthFailure(400, "invalid_request", 'No "code" parameter found')
            pair = state.tokens.exchange_code(
                code,
                now,
                code_lifetime=config.code_lifetime_seconds,
                access_lifetime=config.access_lifetime_seconds,
            )
            return state.token_response(pair)
        refresh_token = str(params.get("refresh_token") or "")
        if not refresh_token:
            raise OAuthFailure(400, "invalid_request", 'No "refresh_token" parameter found')
        if not state.installed and state.uninstalled_count:
            raise OAuthFailure(401, "NOT_INSTALLED", "Application not installed")
        pair = state.tokens.refresh(
            refresh_token,
            now,
            refresh_lifetime=config.refresh_lifetime_seconds,
            access_lifetime=config.access_lifetime_seconds,
            invalidate_access=config.invalidate_access_on_refresh,
        )
        return state.token_response(pair)

    # --- app.info ----------------------------------------------------------------------------------

    def _app_info(self, request: Request) -> Response:
        state = self.state
        with state.lock:
            state.stats.oauth_app_info_requests += 1
        fault = self._fault("app.info")
        if fault is not None:
            answer = self._fault_answer(fault)
            if answer is not None:
                return answer
        params = request_params(request, accept_json=True)
        token = params.get("auth")
        with state.lock:
            start = state.clock.now()
            config = state.config
            try:
                chain, access = state.tokens.authenticate(
                    token if isinstance(token, str) else None, state.clock.now()
                )
            except AuthFailure as failure:
                if failure.error == "invalid_token" and config.app_info_invalid_token == "invalid_client":
                    return json_response(
                        {"error": "invalid_client", "error_description": "Invalid client"}, 400
                    )
                return json_response(
                    {"error": failure.error, "error_description": failure.description}, failure.status
                )
            expires = iso_local(access.expires_at, state.tz)
            body = {
                "result": {
                    "scope": config.scope,
                    "client_id": config.client_id,
                    "expires": expires,
                    "user_id": chain.user_id,
                    "install": {
                        "installed": state.installed,
                        "version": 1,
                        "status": config.app_status,
                        "scope": config.scope,
                        "domain": state.portal_domain,
                        "uri": state.portal_url,
                        "client_endpoint": state.client_endpoint,
                        "member_id": config.member_id,
                        "member_type": "PORTAL",
                    },
                },
                "time": {
                    "start": round(start, 6),
                    "finish": round(start, 6),
                    "duration": 0.0,
                    "processing": 0.0,
                    "date_start": iso_local(start, state.tz),
                    "date_finish": iso_local(start, state.tz),
                },
            }
        return json_response(body)
