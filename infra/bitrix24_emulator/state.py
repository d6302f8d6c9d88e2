"""The one lock-protected state shared by the portal server, the OAuth server and the admin API."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlencode

from bitrix24_emulator.clock import Clock, parse_utc_offset
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.events import BindingTable, Delivery, DeliveryLog, Dispatcher
from bitrix24_emulator.faults import Fault, FaultQueue
from bitrix24_emulator.leads import LeadStore
from bitrix24_emulator.limits import LeakyBucket, OperatingLimiter
from bitrix24_emulator.stats import Stats
from bitrix24_emulator.tokens import IssuedPair, TokenStore, new_secret
from bitrix24_emulator.users import get_user


class EmulatorState:
    """Config, data, tokens, limits, faults and counters; every access goes through `lock`."""

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.tz = parse_utc_offset(config.utc_offset)
        self.leads = LeadStore()
        self.leads.seed(config.leads, config.seed, config.deleted_ratio)
        self.tokens = TokenStore()
        self.bucket = LeakyBucket()
        self.operating = OperatingLimiter()
        self.faults = FaultQueue()
        self.stats = Stats()
        self.application_token = new_secret(32, "0123456789abcdef")
        self.installed = config.installed
        self.install_finish_calls = 0
        self.uninstalled_count = 0
        # Who started the current install (ONAPPUSERREADY's auth[...] pair belongs to them).
        self.installer_user_id = config.user_id
        # A UI install is waiting for BX24.installFinish().
        self.install_pending = False
        self.bindings = BindingTable()
        self.delivery_log = DeliveryLog()
        # Events raised by REST calls under the lock, handed to the dispatcher once the answer is built.
        self.pending_deliveries: list[Delivery] = []
        self.dispatcher = Dispatcher(self._send_delivery)
        self.scheme = "http"
        # Filled in when the servers are bound.
        self.portal_domain = ""
        self.original_portal_domain = ""
        self.oauth_domain = ""
        # Listener ports of former portal addresses: they answer 302 to the current one.
        self.redirected_ports: set[int] = set()

    def _send_delivery(self, delivery: Delivery) -> None:
        from bitrix24_emulator.lifecycle import send  # lifecycle builds on this module

        send(self, delivery)

    def flush_pending_deliveries(self) -> None:
        """Hand the events raised by the last REST calls to the dispatcher (call without the lock held)."""
        with self.lock:
            batch, self.pending_deliveries = self.pending_deliveries, []
        self.dispatcher.submit(batch)

    # --- addresses ---------------------------------------------------------------------------------

    @property
    def portal_url(self) -> str:
        """Base URL of the portal at its current address, no trailing slash."""
        return f"{self.scheme}://{self.portal_domain}"

    @property
    def oauth_url(self) -> str:
        """Base URL of the OAuth server, no trailing slash."""
        return f"{self.scheme}://{self.oauth_domain}"

    @property
    def client_endpoint(self) -> str:
        """The portal REST base as token responses name it."""
        return f"{self.portal_url}/rest/"

    @property
    def server_endpoint(self) -> str:
        """The OAuth server REST base as token responses name it."""
        return f"{self.oauth_url}/rest/"

    # --- tokens ------------------------------------------------------------------------------------

    def token_response(self, pair: IssuedPair) -> dict[str, Any]:
        """The OAuth server's JSON for a grant, field for field as docs/bitrix24-facts.md#f-oauth-5."""
        config = self.config
        domain = self.oauth_domain if config.token_response_domain == "oauth_server" else self.portal_domain
        return {
            "access_token": pair.access.token,
            "client_endpoint": self.client_endpoint,
            "domain": domain,
            "expires": int(pair.access.expires_at),
            "expires_in": config.access_lifetime_seconds,
            "member_id": config.member_id,
            "refresh_token": pair.refresh.token,
            "scope": config.scope,
            "server_endpoint": self.server_endpoint,
            "status": config.app_status,
            "user_id": pair.chain.user_id,
        }

    def issue_tokens(
        self, origin: str = "direct", user_id: int | None = None
    ) -> tuple[IssuedPair, dict[str, Any]]:
        """Start a new chain as if a grant happened; return it and its token response."""
        with self.lock:
            user = get_user(self.config, user_id or self.config.user_id)
            pair = self.tokens.new_chain(
                origin,
                user.user_id,
                self.clock.now(),
                access_lifetime=self.config.access_lifetime_seconds,
            )
            return pair, self.token_response(pair)

    def approve(self, state: str | None, user_id: int | None = None) -> tuple[str, str]:
        """The user pressed "allow": a new code and the redirect URL carrying it (docs/bitrix24-facts.md#f-oauth-2, #f-oauth-3)."""
        with self.lock:
            user = get_user(self.config, user_id or self.config.user_id)
            code = self.tokens.issue_code(self.clock.now(), user.user_id)
            params = {"code": code}
            if state is not None:
                params["state"] = state
            params.update(
                {
                    "domain": self.portal_domain,
                    "member_id": self.config.member_id,
                    "scope": self.config.scope,
                    "server_domain": self.oauth_domain,
                }
            )
            target = self.config.redirect_uri
            joiner = "&" if "?" in target else "?"
            return code, f"{target}{joiner}{urlencode(params)}" if target else ""

    # --- admin operations --------------------------------------------------------------------------

    def reset(self, *, stats: bool = True, limits: bool = True) -> None:
        """Zero the counters and/or the rate and operating state."""
        with self.lock:
            if stats:
                in_flight = self.stats.concurrent_requests
                self.stats = Stats()
                self.stats.concurrent_requests = in_flight
            if limits:
                self.bucket.clear()
                self.operating.clear()

    def seed_leads(
        self, count: int, seed: int | None = None, deleted_ratio: float | None = None
    ) -> dict[str, Any]:
        """Replace the leads with a new deterministic set."""
        if count < 0:
            raise ValueError("count must not be negative")
        ratio = self.config.deleted_ratio if deleted_ratio is None else deleted_ratio
        if not 0 <= ratio < 1:
            raise ValueError("deleted_ratio must be in [0, 1)")
        with self.lock:
            self.leads.seed(count, self.config.seed if seed is None else seed, ratio)
            return self.leads.summary()

    def add_faults(self, raw: list[Any]) -> list[dict[str, Any]]:
        """Validate and queue faults; all or nothing. Raises ValueError."""
        faults = [Fault.from_json(item) for item in raw]
        with self.lock:
            self.faults.add(faults)
            return self.faults.pending()

    def add_operating(self, method: str, seconds: float) -> dict[str, Any]:
        """Charge modeled execution time to a method now (to push it to its limit)."""
        key = (self.config.client_id, method.lower())
        with self.lock:
            now = self.clock.now()
            self.operating.add(key, now, seconds, self.config.operating_window_minutes)
            used, reset_at = self.operating.operating(key, now, self.config.operating_window_minutes)
            return {"method": method.lower(), "operating": round(used, 6), "operating_reset_at": reset_at}

    def uninstall(self) -> None:
        """The admin removed the app: every chain and binding dies, a later install gets a new application token."""
        with self.lock:
            self.installed = False
            self.install_pending = False
            self.uninstalled_count += 1
            self.tokens.revoke_all("uninstalled")
            self.bindings.clear()

    def begin_install(self, finished: bool, user_id: int | None = None) -> None:
        """An install starts; a UI app stays unfinished until BX24.installFinish()."""
        with self.lock:
            if self.uninstalled_count and not self.installed:
                self.application_token = new_secret(32, "0123456789abcdef")
            self.installed = finished
            self.install_pending = not finished
            if user_id is not None:
                self.installer_user_id = get_user(self.config, user_id).user_id

    def record_install_finish(self) -> tuple[int, bool]:
        """BX24.installFinish() was called; returns (calls so far, whether this call finished an install)."""
        with self.lock:
            self.install_finish_calls += 1
            finished_now = self.install_pending or not self.installed
            self.installed = True
            self.install_pending = False
            return self.install_finish_calls, finished_now

    def install_url_handler(self, event: str) -> str | None:
        """The app card's install URL when the portal registers it for `event`, else None."""
        config = self.config
        if not config.install_url:
            return None
        if event == "ONAPPINSTALL" and config.app_mode == "api_only":
            return config.install_url
        if event == "ONAPPUSERREADY" and config.market_app:
            return config.install_url
        return None

    def info(self) -> dict[str, Any]:
        """Addresses and identities (no secrets)."""
        with self.lock:
            return {
                "portal_url": self.portal_url,
                "portal_domain": self.portal_domain,
                "original_portal_domain": self.original_portal_domain,
                "oauth_url": self.oauth_url,
                "oauth_domain": self.oauth_domain,
                "client_endpoint": self.client_endpoint,
                "server_endpoint": self.server_endpoint,
                "member_id": self.config.member_id,
                "client_id": self.config.client_id,
                "scope": self.config.scope,
                "installed": self.installed,
                "install_pending": self.install_pending,
                "install_finish_calls": self.install_finish_calls,
                "app_mode": self.config.app_mode,
                "market_app": self.config.market_app,
                "install_url": self.config.install_url,
                "leads": self.leads.summary(),
                "clock_offset_seconds": self.clock.offset,
            }
