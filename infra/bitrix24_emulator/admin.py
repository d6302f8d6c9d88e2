"""The admin API under {portal}/_emulator/: stats, config, tokens, faults, leads, installs, browser helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Request, Response

from bitrix24_emulator import installer, lifecycle
from bitrix24_emulator.pages import bx24_script
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.users import SESSION_COOKIE, get_user, parse_user_id
from bitrix24_emulator.wsgi import html_response, json_response

PREFIX = "/_emulator"


class AdminError(Exception):
    """A bad admin request (400 with a message)."""


class AdminApi:
    """Routes admin requests; `rename` opens a new portal address and returns its facts."""

    def __init__(self, state: EmulatorState, rename: Callable[[], dict[str, Any]]) -> None:
        self.state = state
        self.rename = rename
        self.routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", ""): self.index,
            ("GET", "/info"): self.info,
            ("GET", "/credentials"): self.credentials,
            ("GET", "/stats"): self.stats,
            ("POST", "/reset"): self.reset,
            ("GET", "/config"): self.get_config,
            ("POST", "/config"): self.set_config,
            ("GET", "/tokens"): self.tokens,
            ("POST", "/tokens/issue"): self.issue_tokens,
            ("POST", "/tokens/expire"): self.expire_tokens,
            ("POST", "/tokens/age-refresh"): self.age_refresh,
            ("POST", "/tokens/invalidate-refresh"): self.invalidate_refresh,
            ("POST", "/authorize"): self.authorize,
            ("GET", "/faults"): self.get_faults,
            ("POST", "/faults"): self.add_faults,
            ("DELETE", "/faults"): self.clear_faults,
            ("GET", "/leads"): self.leads,
            ("POST", "/leads/seed"): self.seed_leads,
            ("GET", "/operating"): self.get_operating,
            ("POST", "/operating"): self.add_operating,
            ("POST", "/rename"): self.do_rename,
            ("POST", "/clock"): self.clock,
            ("POST", "/install"): self.install,
            ("POST", "/uninstall"): self.uninstall,
            ("GET", "/events"): self.events,
            ("POST", "/events/flush"): self.flush_events,
            ("POST", "/send-install"): self.send_install,
            ("POST", "/send-uninstall"): self.send_uninstall,
            ("GET", "/bx24.js"): self.bx24_js,
            ("POST", "/install-finish"): self.install_finish,
            ("OPTIONS", "/install-finish"): self.install_finish_preflight,
            ("GET", "/install-finish-calls"): self.install_finish_calls,
            ("GET", "/frame"): self.frame,
            ("GET", "/login"): self.login,
        }

    def __call__(self, request: Request) -> Response:
        """Dispatch one admin request."""
        sub = request.path[len(PREFIX) :].rstrip("/")
        handler = self.routes.get((request.method, sub))
        if handler is None:
            if any(path == sub for _method, path in self.routes):
                return json_response({"error": "method not allowed"}, 405)
            return json_response({"error": "no such admin endpoint", "endpoints": self._listing()}, 404)
        try:
            return handler(request)
        except (AdminError, ValueError) as exc:
            return json_response({"error": str(exc)}, 400)

    def _listing(self) -> list[str]:
        return [f"{method} {PREFIX}{path}" for method, path in self.routes]

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        raw = request.get_data(as_text=True)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise AdminError("body must be JSON") from exc
        if not isinstance(body, dict):
            raise AdminError("body must be a JSON object")
        return body

    # --- facts -------------------------------------------------------------------------------------

    def index(self, request: Request) -> Response:
        """List the endpoints."""
        return json_response({"endpoints": self._listing()})

    def info(self, request: Request) -> Response:
        """Addresses and identities, no secrets."""
        return json_response(self.state.info())

    def credentials(self, request: Request) -> Response:
        """The app's client_id/client_secret: explicit, for tools that must configure the app."""
        with self.state.lock:
            config = self.state.config
            return json_response(
                {
                    "client_id": config.client_id,
                    "client_secret": config.client_secret,
                    "application_token": self.state.application_token,
                    "member_id": config.member_id,
                }
            )

    def stats(self, request: Request) -> Response:
        """Counters since the last reset (?timestamps=0 leaves out the per-request timestamps)."""
        with self.state.lock:
            body = self.state.stats.as_json()
            if request.args.get("timestamps") in ("0", "false", "no"):
                body.pop("request_timestamps")
            limits = self.state.config.rate_limits()
            now = self.state.clock.now()
            body["bucket_level"] = (
                round(self.state.bucket.level(request.remote_addr or "unknown", now, limits[0]), 3)
                if limits
                else None
            )
            body["faults_injected"] = self.state.faults.injected
            body["install_finish_calls"] = self.state.install_finish_calls
            body["event_deliveries"] = len(self.state.delivery_log.entries)
        return json_response(body)

    def reset(self, request: Request) -> Response:
        """Zero stats (and, unless told otherwise, the leaky bucket and operating windows)."""
        body = self._body(request)
        self.state.reset(stats=bool(body.get("stats", True)), limits=bool(body.get("limits", True)))
        return json_response({"reset": True})

    def get_config(self, request: Request) -> Response:
        """Current settings (no secret)."""
        with self.state.lock:
            return json_response(self.state.config.public_view())

    def set_config(self, request: Request) -> Response:
        """Change runtime settings: latency, time scale, limits, rate plan, UNVERIFIED switches."""
        changes = self._body(request)
        with self.state.lock:
            return json_response(self.state.config.apply(changes))

    # --- tokens ------------------------------------------------------------------------------------

    def tokens(self, request: Request) -> Response:
        """Every chain with its live tokens (a test tool: the admin asked for them explicitly)."""
        with self.state.lock:
            return json_response({"chains": self.state.tokens.chains(self.state.clock.now())})

    def issue_tokens(self, request: Request) -> Response:
        """A new chain without the browser dance; answers the token response JSON."""
        body = self._body(request)
        user_id = parse_user_id(body.get("user_id"), self.state.config.user_id)
        pair, response = self.state.issue_tokens("direct", user_id)
        return json_response({**response, "chain_id": pair.chain.chain_id})

    def _member_matches(self, body: dict[str, Any]) -> bool:
        member = body.get("member_id")
        return member is None or member == self.state.config.member_id

    def expire_tokens(self, request: Request) -> Response:
        """Expire access tokens: all, one chain, one token, or one member (this portal)."""
        body = self._body(request)
        with self.state.lock:
            count = 0
            if self._member_matches(body):
                count = self.state.tokens.expire_access(
                    self.state.clock.now(), chain_id=body.get("chain_id"), token=body.get("access_token")
                )
        return json_response({"expired": count})

    def age_refresh(self, request: Request) -> Response:
        """Age live refresh tokens by `seconds` (or `days`)."""
        body = self._body(request)
        seconds = float(body.get("seconds", 0)) + float(body.get("days", 0)) * 86400
        if seconds <= 0:
            raise AdminError("give a positive 'seconds' or 'days'")
        with self.state.lock:
            count = (
                self.state.tokens.age_refresh(seconds, body.get("chain_id"))
                if self._member_matches(body)
                else 0
            )
        return json_response({"aged": count, "seconds": seconds})

    def invalidate_refresh(self, request: Request) -> Response:
        """Make live refresh tokens invalid (invalid_grant on use)."""
        body = self._body(request)
        with self.state.lock:
            count = (
                self.state.tokens.revoke_refresh(body.get("chain_id")) if self._member_matches(body) else 0
            )
        return json_response({"invalidated": count})

    def authorize(self, request: Request) -> Response:
        """Approve as {"user_id"} (default 1) would; returns the code and the redirect URL (nothing is fetched)."""
        body = self._body(request)
        raw_state = body.get("state")
        user_id = parse_user_id(body.get("user_id"), self.state.config.user_id)
        code, location = self.state.approve(str(raw_state) if raw_state is not None else None, user_id)
        return json_response({"code": code, "location": location})

    # --- faults, leads, limits, clock --------------------------------------------------------------

    def get_faults(self, request: Request) -> Response:
        """Pending scripted faults."""
        with self.state.lock:
            return json_response(
                {"faults": self.state.faults.pending(), "injected": self.state.faults.injected}
            )

    def add_faults(self, request: Request) -> Response:
        """Queue faults: {"faults": [...]} or a bare list."""
        raw = json.loads(request.get_data(as_text=True) or "[]")
        items = raw.get("faults") if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            raise AdminError("send a list of faults or {'faults': [...]}")
        return json_response({"faults": self.state.add_faults(items)})

    def clear_faults(self, request: Request) -> Response:
        """Drop every pending fault."""
        with self.state.lock:
            self.state.faults.clear()
        return json_response({"faults": []})

    def leads(self, request: Request) -> Response:
        """Lead count and ID range."""
        with self.state.lock:
            return json_response(self.state.leads.summary())

    def seed_leads(self, request: Request) -> Response:
        """Replace the leads: {"count": N, "seed"?: S, "deleted_ratio"?: r}."""
        body = self._body(request)
        if "count" not in body:
            raise AdminError("give 'count'")
        ratio = body.get("deleted_ratio")
        summary = self.state.seed_leads(
            int(body["count"]), body.get("seed"), float(ratio) if ratio is not None else None
        )
        return json_response(summary)

    def get_operating(self, request: Request) -> Response:
        """Seconds used per method in the current window."""
        with self.state.lock:
            snapshot = self.state.operating.snapshot(
                self.state.clock.now(), self.state.config.operating_window_minutes
            )
        return json_response({"operating": snapshot})

    def add_operating(self, request: Request) -> Response:
        """Charge {"method", "seconds"} now, e.g. to put a method over its limit."""
        body = self._body(request)
        method, seconds = body.get("method"), body.get("seconds")
        if not isinstance(method, str) or not isinstance(seconds, int | float) or seconds < 0:
            raise AdminError("give 'method' (string) and 'seconds' (non-negative number)")
        return json_response(self.state.add_operating(method, float(seconds)))

    def do_rename(self, request: Request) -> Response:
        """Move the portal to a new address; the old one answers 302."""
        return json_response(self.rename())

    def clock(self, request: Request) -> Response:
        """Move the emulated clock: {"advance_seconds": n, "freeze"?: bool}."""
        body = self._body(request)
        seconds = body.get("advance_seconds", 0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise AdminError("advance_seconds must be a non-negative number")
        clock = self.state.clock
        if body.get("freeze") is True:
            clock.freeze()
        elif body.get("freeze") is False:
            clock.unfreeze()
        now = clock.advance(float(seconds))
        return json_response({"now": now, "offset_seconds": clock.offset, "frozen": clock.frozen})

    # --- installs ----------------------------------------------------------------------------------

    def install(self, request: Request) -> Response:
        """Install as {"user_id"} (an administrator) per app_mode; answers the deliveries made (no tokens)."""
        body = self._body(request)
        user_id = parse_user_id(body.get("user_id"), self.state.config.user_id)
        return json_response(lifecycle.install(self.state, user_id))

    def uninstall(self, request: Request) -> Response:
        """Remove the app as an administrator: ONAPPUNINSTALL to bound handlers only, every chain revoked."""
        body = self._body(request)
        clean = body.get("clean", False)
        if not isinstance(clean, bool):
            raise AdminError("clean must be true or false")
        return json_response(lifecycle.uninstall(self.state, clean))

    def events(self, request: Request) -> Response:
        """Bindings (event.get rows with ids) and the delivery log (event, handler, status; no tokens)."""
        with self.state.lock:
            bindings = [{"binding_id": row.binding_id, **row.public()} for row in self.state.bindings.rows()]
            install_url = {
                event: self.state.install_url_handler(event) for event in ("ONAPPINSTALL", "ONAPPUSERREADY")
            }
            deliveries = list(self.state.delivery_log.entries)
        return json_response(
            {
                "bindings": bindings,
                "install_url_bindings": {k: v for k, v in install_url.items() if v},
                "deliveries": deliveries,
                "pending": self.state.dispatcher.pending(),
            }
        )

    def flush_events(self, request: Request) -> Response:
        """Wait until queued event deliveries are sent ({"timeout": s}, default 10)."""
        body = self._body(request)
        timeout = body.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise AdminError("timeout must be a non-negative number")
        idle = self.state.dispatcher.wait_idle(float(timeout))
        return json_response({"idle": idle, "pending": self.state.dispatcher.pending()})

    def send_install(self, request: Request) -> Response:
        """Direct delivery: POST the install page or ONAPPINSTALL straight to {"url"}, as a bound handler gets it."""
        body = self._body(request)
        url = body.get("url")
        kind = body.get("kind", "page")
        if not isinstance(url, str) or kind not in ("page", "event"):
            raise AdminError("give 'url' and 'kind' ('page' or 'event')")
        legacy = body.get("legacy")
        result = installer.send_install(
            self.state,
            url,
            kind,
            legacy=None if legacy is None else bool(legacy),
            event_handler_id=bool(body.get("event_handler_id", False)),
            user_id=parse_user_id(body.get("user_id"), self.state.config.user_id),
        )
        return json_response(result)

    def send_uninstall(self, request: Request) -> Response:
        """Direct delivery: POST ONAPPUNINSTALL straight to {"url"}; {"application_token"} forges it."""
        body = self._body(request)
        url = body.get("url")
        if not isinstance(url, str):
            raise AdminError("give 'url'")
        token = body.get("application_token")
        result = installer.send_uninstall(
            self.state,
            url,
            clean=bool(body.get("clean", True)),
            application_token=str(token) if token else None,
        )
        return json_response(result)

    # --- browser helpers ---------------------------------------------------------------------------

    def bx24_js(self, request: Request) -> Response:
        """The BX24 stand-in script."""
        with self.state.lock:
            script = bx24_script(
                portal_domain=self.state.portal_domain,
                member_id=self.state.config.member_id,
                language=self.state.config.language,
            )
        response = Response(script, mimetype="application/javascript")
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "no-store"
        return response

    def install_finish(self, request: Request) -> Response:
        """BX24.installFinish() reports here (sendBeacon or fetch from the app's page)."""
        calls, user_ready = lifecycle.finish_install(self.state)
        if user_ready is not None:
            self.state.dispatcher.submit([user_ready])  # a Market app's ONAPPUSERREADY, sent once
        response = json_response({"install_finish_calls": calls})
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    def install_finish_preflight(self, request: Request) -> Response:
        """CORS preflight for fetch() callers."""
        response = Response(status=204)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        return response

    def install_finish_calls(self, request: Request) -> Response:
        """How many times BX24.installFinish() was called."""
        with self.state.lock:
            return json_response(
                {"install_finish_calls": self.state.install_finish_calls, "installed": self.state.installed}
            )

    def frame(self, request: Request) -> Response:
        """A portal page that frames ?url= with a fresh install POST (auto-submitted into an iframe)."""
        url = request.args.get("url")
        if not url:
            raise AdminError("give ?url=")
        raw_legacy = request.args.get("legacy")
        legacy = None if raw_legacy is None else raw_legacy in ("1", "true", "yes")
        user_id = parse_user_id(request.args.get("user_id"), self.state.installer_user_id)
        return html_response(installer.frame_html(self.state, url, legacy=legacy, user_id=user_id))

    def login(self, request: Request) -> Response:
        """Log the browser in as ?user_id= (a portal session cookie), then go to ?next= on this portal."""
        user_id = parse_user_id(request.args.get("user_id"), self.state.config.user_id)
        with self.state.lock:
            get_user(self.state.config, user_id)
            portal = self.state.portal_url
        target = request.args.get("next") or "/"
        if not target.startswith("/") or target.startswith("//"):
            raise AdminError("next must be a path on this portal")
        response = Response(status=302)
        response.headers["Location"] = f"{portal}{target}"
        response.set_cookie(SESSION_COOKIE, str(user_id), httponly=True, samesite="Lax", path="/")
        return response
