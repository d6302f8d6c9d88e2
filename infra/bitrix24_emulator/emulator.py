"""The in-process API: start the portal and OAuth servers, read their addresses, script faults, read stats."""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

from bitrix24_emulator import installer, lifecycle
from bitrix24_emulator.admin import PREFIX, AdminApi
from bitrix24_emulator.clock import Clock
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.installer import InstallKind
from bitrix24_emulator.oauth_server import OAuthServerApp
from bitrix24_emulator.portal import PortalApp
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.wsgi import ServerThread


class Emulator:
    """A Bitrix24 portal plus its OAuth server on two loopback ports. Use `start()` or `with`."""

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock = clock or Clock()
        self.state = EmulatorState(self.config, self.clock)
        self._admin = AdminApi(self.state, self.rename_portal)
        self._portal_app = PortalApp(self.state, self._admin)
        self._oauth_app = OAuthServerApp(self.state)
        self._portal_servers: list[ServerThread] = []
        self._oauth_server: ServerThread | None = None
        self._admin_port = 0

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind both servers (port 0 = ephemeral) and serve in background threads."""
        if self._oauth_server is not None:
            raise RuntimeError("the emulator is already running")
        host = self.config.host
        portal = ServerThread(host, self.config.portal_port, self._portal_app, "b24-emulator-portal")
        try:
            oauth = ServerThread(host, self.config.oauth_port, self._oauth_app, "b24-emulator-oauth")
        except OSError:
            portal.server.server_close()
            raise
        with self.state.lock:
            self.state.portal_domain = f"{host}:{portal.port}"
            self.state.original_portal_domain = self.state.portal_domain
            self.state.oauth_domain = f"{host}:{oauth.port}"
        self._admin_port = portal.port
        self._portal_servers = [portal]
        self._oauth_server = oauth
        portal.start()
        oauth.start()
        return self

    def stop(self) -> None:
        """Stop every listener."""
        for server in self._portal_servers:
            server.stop()
        if self._oauth_server is not None:
            self._oauth_server.stop()
        self.state.dispatcher.stop()
        self._portal_servers = []
        self._oauth_server = None

    def __enter__(self) -> Emulator:
        return self.start() if self._oauth_server is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- addresses and identities ------------------------------------------------------------------

    @property
    def portal_url(self) -> str:
        """Current portal base URL, e.g. http://127.0.0.1:PORT (changes after `rename_portal`)."""
        return self.state.portal_url

    @property
    def portal_domain(self) -> str:
        """Current portal host:port, as Bitrix24 names domains."""
        return self.state.portal_domain

    @property
    def oauth_url(self) -> str:
        """OAuth server base URL (token endpoint at /oauth/token/)."""
        return self.state.oauth_url

    @property
    def oauth_domain(self) -> str:
        """OAuth server host:port (the redirect's `server_domain`)."""
        return self.state.oauth_domain

    @property
    def admin_url(self) -> str:
        """Admin API base on the first portal listener, e.g. http://127.0.0.1:PORT/_emulator."""
        return f"{self.state.scheme}://{self.config.host}:{self._admin_port}{PREFIX}"

    @property
    def client_endpoint(self) -> str:
        """Portal REST base with trailing slash."""
        return self.state.client_endpoint

    @property
    def server_endpoint(self) -> str:
        """OAuth server REST base with trailing slash."""
        return self.state.server_endpoint

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint."""
        return f"{self.state.oauth_url}/oauth/token/"

    @property
    def authorize_url(self) -> str:
        """The portal's consent page (add ?client_id=..&state=..)."""
        return f"{self.state.portal_url}/oauth/authorize/"

    @property
    def member_id(self) -> str:
        """The portal's member_id."""
        return self.config.member_id

    @property
    def client_id(self) -> str:
        """The app's client_id."""
        return self.config.client_id

    @property
    def client_secret(self) -> str:
        """The app's client secret (only ever sent to the OAuth server)."""
        return self.config.client_secret

    @property
    def application_token(self) -> str:
        """The app's current application_token (changes on reinstall after an uninstall)."""
        return self.state.application_token

    @property
    def install_finish_calls(self) -> int:
        """How many times BX24.installFinish() reported in."""
        return self.state.install_finish_calls

    def describe(self) -> dict[str, Any]:
        """Addresses and identities as one JSON-ready dict (no client secret)."""
        return {**self.state.info(), "admin_url": self.admin_url, "token_url": self.token_url}

    # --- admin operations --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The same JSON as GET /_emulator/stats."""
        with self.state.lock:
            return self.state.stats.as_json()

    def reset(self, *, stats: bool = True, limits: bool = True) -> None:
        """Zero stats and/or the leaky bucket and operating windows."""
        self.state.reset(stats=stats, limits=limits)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change runtime settings (see config.RUNTIME_SETTINGS); returns the public config."""
        with self.state.lock:
            return self.config.apply(changes)

    def add_faults(self, faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue scripted faults; returns the pending queue."""
        return self.state.add_faults(faults)

    def clear_faults(self) -> None:
        """Drop pending faults."""
        with self.state.lock:
            self.state.faults.clear()

    def seed_leads(
        self, count: int, seed: int | None = None, deleted_ratio: float | None = None
    ) -> dict[str, Any]:
        """Replace the leads with `count` deterministic ones."""
        return self.state.seed_leads(count, seed, deleted_ratio)

    def issue_tokens(self, user_id: int | None = None) -> dict[str, Any]:
        """A fresh chain without the browser: the token response JSON (plus `chain_id`)."""
        pair, response = self.state.issue_tokens("direct", user_id)
        return {**response, "chain_id": pair.chain.chain_id}

    def approve(self, state: str | None = None, *, user_id: int | None = None) -> str:
        """Consent as `user_id` (default 1, the administrator) would; returns the redirect URL with the code."""
        _code, location = self.state.approve(state, user_id)
        return location

    def authorization_code(self, state: str | None = None, *, user_id: int | None = None) -> str:
        """Consent as `user_id` would; returns just the code."""
        code, _location = self.state.approve(state, user_id)
        return code

    def install(self, user_id: int | None = None) -> dict[str, Any]:
        """Install the app as an administrator per app_mode (same answer as POST /_emulator/install)."""
        return lifecycle.install(self.state, user_id)

    def uninstall(self, clean: bool = False) -> dict[str, Any]:
        """Remove the app as an administrator: ONAPPUNINSTALL to bound handlers only, every chain revoked."""
        return lifecycle.uninstall(self.state, clean)

    def install_finish(self) -> int:
        """What BX24.installFinish() does from the app's page; returns the number of calls so far."""
        calls, user_ready = lifecycle.finish_install(self.state)
        if user_ready is not None:
            self.state.dispatcher.submit([user_ready])
        return calls

    def events(self) -> dict[str, Any]:
        """Bindings and the delivery log (no tokens), as GET /_emulator/events."""
        with self.state.lock:
            return {
                "bindings": [
                    {"binding_id": row.binding_id, **row.public()} for row in self.state.bindings.rows()
                ],
                "deliveries": list(self.state.delivery_log.entries),
            }

    def flush_events(self, timeout: float = 10.0) -> bool:
        """Wait until events raised by REST calls were delivered; False on timeout."""
        return self.state.dispatcher.wait_idle(timeout)

    def tokens(self) -> list[dict[str, Any]]:
        """Every chain with its current tokens."""
        with self.state.lock:
            return self.state.tokens.chains(self.clock.now())

    def expire_access_tokens(self, chain_id: str | None = None, access_token: str | None = None) -> int:
        """Expire access tokens (all, a chain, or one); returns how many."""
        with self.state.lock:
            return self.state.tokens.expire_access(self.clock.now(), chain_id=chain_id, token=access_token)

    def age_refresh_tokens(self, seconds: float, chain_id: str | None = None) -> int:
        """Age live refresh tokens by `seconds`; returns how many."""
        with self.state.lock:
            return self.state.tokens.age_refresh(seconds, chain_id)

    def invalidate_refresh_tokens(self, chain_id: str | None = None) -> int:
        """Make live refresh tokens invalid; returns how many."""
        with self.state.lock:
            return self.state.tokens.revoke_refresh(chain_id)

    def add_operating(self, method: str, seconds: float) -> dict[str, Any]:
        """Charge modeled execution time to a method now."""
        return self.state.add_operating(method, seconds)

    def rename_portal(self) -> dict[str, Any]:
        """Move the portal to a new port; the old address answers 302 with the new Location."""
        if not self._portal_servers:
            raise RuntimeError("the emulator is not running")
        listener = ServerThread(self.config.host, 0, self._portal_app, "b24-emulator-portal-renamed")
        with self.state.lock:
            old_domain = self.state.portal_domain
            self.state.redirected_ports.update(server.port for server in self._portal_servers)
            self.state.portal_domain = f"{self.config.host}:{listener.port}"
            new_domain = self.state.portal_domain
        self._portal_servers.append(listener)
        listener.start()
        return {"old_domain": old_domain, "portal_domain": new_domain, "portal_url": self.portal_url}

    def send_install(
        self,
        url: str,
        kind: InstallKind = "page",
        *,
        legacy: bool | None = None,
        event_handler_id: bool = False,
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """Direct delivery: POST the install page or ONAPPINSTALL straight to `url` (legacy None = setting)."""
        return installer.send_install(
            self.state, url, kind, legacy=legacy, event_handler_id=event_handler_id, user_id=user_id
        )

    def send_uninstall(
        self, url: str, *, clean: bool = True, application_token: str | None = None
    ) -> dict[str, Any]:
        """Direct delivery: POST ONAPPUNINSTALL straight to `url` (a given application_token forges it)."""
        return installer.send_uninstall(self.state, url, clean=clean, application_token=application_token)

    def frame_url(self, install_url: str, *, user_id: int | None = None) -> str:
        """The admin page that frames `install_url` like a portal does (as `user_id`, default the installer)."""
        suffix = f"&user_id={user_id}" if user_id is not None else ""
        return f"{self.admin_url}/frame?url={quote(install_url, safe='')}{suffix}"
