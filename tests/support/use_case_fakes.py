"""In-memory stand-ins behind the same interfaces as the vault and the OAuth client (unit tests only).

They follow the fact sheet: codes are single-use, app.info answers the shape of docs/bitrix24-facts.md#f-oauth-8, a state is
single-use and bound to a nonce, a replayed grant changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace
from typing import Any

from b24connector.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    InvalidGrant,
    InvalidToken,
    UnsafeEndpoint,
)
from b24connector.bitrix24.oauth import AppInfo
from b24connector.tokens import TokenSet
from b24connector.vault.errors import GrantRefused, StateRefusal, StateRefused, VaultUnavailable
from b24connector.vault.journal import LifecycleJob
from b24connector.vault.models import ROLE_RANK, ROLE_SYSTEM, ROLE_USER
from tests.leak_canary import canary_value

CLIENT_ID = "local.test.app"
DEFAULT_SERVER = "https://oauth.bitrix.info"
SERVERS = (DEFAULT_SERVER, "https://oauth.bitrix24.tech")


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class _State:
    nonce_hash: str
    portal_domain: str
    expires_at: float
    used_at: float | None = None


@dataclass(frozen=True)
class Consumed:
    portal_domain: str


class FakeStates:
    """StateBook in memory like vault.StateStore: hashed, single use (marked used), nonce-bound, expiring."""

    def __init__(self, clock: Clock, ttl: int = 600) -> None:
        self.clock = clock
        self.ttl = ttl
        self.items: dict[str, _State] = {}
        self.fail = False

    def save(self, raw_state: str, browser_nonce: str, portal_domain: str) -> int:
        if self.fail:
            raise VaultUnavailable("DynamoDB PutItem failed")
        expires = self.clock() + self.ttl
        self.items[_hash(raw_state)] = _State(_hash(browser_nonce), portal_domain, expires)
        return int(expires)

    def consume(self, raw_state: str, browser_nonce: str) -> Consumed:
        item = self.items.get(_hash(raw_state))
        if item is None:
            raise StateRefused(StateRefusal.MISSING)
        if item.used_at is not None:
            raise StateRefused(StateRefusal.USED)
        if item.expires_at <= self.clock():
            raise StateRefused(StateRefusal.EXPIRED)
        if not hmac.compare_digest(item.nonce_hash, _hash(browser_nonce)):
            raise StateRefused(StateRefusal.COOKIE_MISMATCH)
        item.used_at = self.clock()
        return Consumed(item.portal_domain)

    def unused(self) -> int:
        """How many stored states are still unused."""
        return sum(1 for item in self.items.values() if item.used_at is None)


@dataclass
class Issued:
    """A code the fake OAuth server will exchange once."""

    member_id: str
    domain: str
    client_endpoint: str | None = None
    admin: bool = True


class FakeOAuth:
    """The OAuth client's surface: allow-listed servers, single-use codes, app.info on live tokens."""

    def __init__(self, clock: Clock, *, local_mode: bool = False) -> None:
        self.clock = clock
        self.codes: dict[str, Issued] = {}
        self.live_tokens: dict[str, AppInfo] = {}
        self.exchanges: list[dict[str, Any]] = []
        self.app_info_calls: list[str] = []
        self.fail_exchange: Exception | None = None
        self.fail_app_info: Exception | None = None
        self.token_overrides: dict[str, Any] = {}
        self.issued_refresh: dict[str, str] = {}  # access token -> its refresh token
        self.admin_tokens: set[str] = set()  # access tokens whose user is a portal administrator
        self.refreshes: list[str] = []
        self.expired: set[str] = set()  # access tokens app.info answers expired_token for

    def authorize_url(self, portal_host: str, state: str, *, code_challenge: str | None = None) -> str:
        extra = f"&code_challenge={code_challenge}&code_challenge_method=S256" if code_challenge else ""
        return f"https://{portal_host}/oauth/authorize/?client_id={CLIENT_ID}&state={state}{extra}"

    def resolve_server(self, hint: str | None) -> str:
        if not hint:
            return DEFAULT_SERVER
        for server in SERVERS:
            host = server.partition("://")[2]
            if hint in (host, server, f"{server}/", f"{server}/rest/"):
                return server
        raise UnsafeEndpoint("UNSAFE_OAUTH_SERVER", "not allow-listed")

    def issue_code(self, member_id: str, domain: str, **kwargs: Any) -> str:
        code = canary_value("code")
        self.codes[code] = Issued(member_id, domain, **kwargs)
        return code

    def exchange_code(
        self, code: str, *, server_hint: str | None = None, code_verifier: str | None = None
    ) -> TokenSet:
        self.exchanges.append({"code": code, "server": server_hint, "verifier": code_verifier})
        if self.fail_exchange is not None:
            raise self.fail_exchange
        issued = self.codes.pop(code, None)  # single use
        if issued is None:
            raise InvalidGrant("invalid_grant", "code is unknown or used", http_status=400)
        tokens = self.new_tokens(
            issued.member_id, issued.domain, client_endpoint=issued.client_endpoint, admin=issued.admin
        )
        return replace(tokens, **self.token_overrides) if self.token_overrides else tokens

    def new_tokens(
        self,
        member_id: str,
        domain: str,
        *,
        client_endpoint: str | None = None,
        admin: bool = True,
        user_id: int = 1,
    ) -> TokenSet:
        access = canary_value("access")
        if admin:
            self.admin_tokens.add(access)
        endpoint = client_endpoint or f"https://{domain}/rest/"
        self.live_tokens[access] = AppInfo(
            member_id=member_id,
            domain=domain,
            client_id=CLIENT_ID,
            client_endpoint=endpoint,
            installed=True,
            status="L",
            scope="crm,user",
            user_id=user_id,
        )
        refresh = canary_value("refresh")
        self.issued_refresh[access] = refresh
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            expires_at=int(self.clock()) + 3600,
            member_id=member_id,
            client_endpoint=endpoint,
            server_endpoint=f"{DEFAULT_SERVER}/rest/",
            scope="crm,user",
            status="L",
            user_id=user_id,
            obtained_at=int(self.clock()),
        )

    def app_info(self, access_token: str, *, server_hint: str | None = None) -> AppInfo:
        self.app_info_calls.append(access_token)
        if self.fail_app_info is not None:
            raise self.fail_app_info
        if access_token in self.expired:
            raise ExpiredToken("expired_token", "The access token provided has expired.", http_status=401)
        info = self.live_tokens.get(access_token)
        if info is None:
            raise InvalidToken("invalid_token", "Unable to get application by token", http_status=401)
        return info

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        """Single use, like the OAuth server: the old pair's access token stops working."""
        self.refreshes.append(refresh_token)
        for access, info in list(self.live_tokens.items()):
            if self.issued_refresh.get(access) == refresh_token:
                del self.live_tokens[access]
                self.issued_refresh.pop(access)
                return self.new_tokens(
                    info.member_id, info.domain, admin=access in self.admin_tokens, user_id=info.user_id or 1
                )
        raise InvalidGrant("invalid_grant", "Invalid refresh token", http_status=400)


class FakeRoles:
    """RoleProbe over FakeOAuth's administrators (REST user.admin)."""

    def __init__(self, oauth: FakeOAuth) -> None:
        self.oauth = oauth
        self.calls = 0
        self.fail: Exception | None = None

    def is_admin(self, client_endpoint: str, domain: str, access_token: str) -> bool:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return access_token in self.oauth.admin_tokens


class FakeJournal:
    """JobSink in memory."""

    def __init__(self) -> None:
        self.jobs: list[LifecycleJob] = []
        self.fail: Exception | None = None

    def send(self, job: LifecycleJob) -> None:
        if self.fail is not None:
            raise self.fail
        self.jobs.append(job)

    def kinds(self) -> list[str]:
        return [job.kind for job in self.jobs]


@dataclass
class StoredPortal:
    member_id: str
    version: int
    domain: str
    health: str = "active"
    application_token_hash: str | None = field(default=None, repr=False)
    tokens: TokenSet | None = field(default=None, repr=False)
    digests: list[str] = field(default_factory=list)
    grant_role: str = ROLE_USER

    @property
    def is_active(self) -> bool:
        return self.health == "active"

    @property
    def role_rank(self) -> int:
        return ROLE_RANK[self.grant_role]


class FakeStore:
    """PortalStore's grant/uninstall surface, with replay detection like the vault's grant digests."""

    def __init__(self) -> None:
        self.portals: dict[str, StoredPortal] = {}
        self.writes = 0
        self.fail: Exception | None = None
        self.uninstall_checks = 0
        self.uninstall_checks_allowed = True

    def get(self, member_id: str, *, consistent: bool = False) -> StoredPortal | None:
        if self.fail is not None:
            raise self.fail
        return self.portals.get(member_id)

    def save_grant(
        self, tokens: TokenSet, *, domain: str, role: str, application_token: str | None = None
    ) -> StoredPortal:
        if self.fail is not None:
            raise self.fail
        digest = _hash(tokens.access_token + "\0" + tokens.refresh_token)
        current = self.portals.get(tokens.member_id)
        if current is not None and digest in current.digests:
            return current
        if current is not None and current.is_active and current.role_rank > ROLE_RANK[role]:
            raise GrantRefused(tokens.member_id, current.grant_role, role)
        # Like the vault: an ordinary employee's application_token is never trusted.
        if role not in ("admin", ROLE_SYSTEM):
            application_token = None
        self.writes += 1
        portal = StoredPortal(
            member_id=tokens.member_id,
            version=(current.version if current else 0) + 1,
            domain=domain,
            # Like the vault: only the SHA-256 verifier of the application_token is kept.
            application_token_hash=_hash(application_token)
            if application_token
            else (current.application_token_hash if current else None),
            tokens=tokens,
            digests=[digest, *(current.digests if current else [])],
            grant_role=role,
        )
        self.portals[tokens.member_id] = portal
        return portal

    def claim_uninstall_check(self, member_id: str, *, min_gap_seconds: float) -> bool:
        self.uninstall_checks += 1
        return self.uninstall_checks_allowed

    def mark_uninstalled(self, member_id: str, *, clean: bool) -> StoredPortal | None:
        current = self.portals.get(member_id)
        if current is None:
            return None
        if current.health == "uninstalled" and (not clean or not current.domain):
            return None  # a replay writes nothing (as the conditional update in PortalStore)
        self.writes += 1
        current.version += 1
        current.health = "uninstalled"
        current.tokens = None
        if clean:
            current.application_token_hash = None
            current.domain = ""
        return current


def claim_check_always(member_id: str, *, min_gap_seconds: float) -> bool:
    """A claim_uninstall_check that never throttles (the store's throttle is tested on moto)."""
    return True


def raise_(error: Bitrix24Error | VaultUnavailable) -> Any:
    """Raise `error` (for lambdas)."""
    raise error
