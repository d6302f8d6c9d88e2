"""Application install and uninstall (fact sheet 3.2-3.5): the install page POST and the app events.

Trust rules:
- Install data is only a claim until the OAuth server's `app.info`, asked with the received access
  token on an allow-listed server, confirms the same app (client_id), portal (member_id, domain) and
  REST endpoint. Only then are tokens and the application_token stored (the token only as its
  SHA-256 verifier: a leaked table must not let anyone forge an uninstall).
- ONAPPUNINSTALL carries no token: a constant-time match of the SHA-256 of `auth[application_token]`
  against the stored verifier for `auth[member_id]` is its only proof. Unknown portal or mismatch: 403,
  no change.
- Replays of a grant already stored change nothing (the vault recognises the pair).
- The install page is also what a portal opens when the app's main page shares its URL. Once the app
  is installed (app.info says so) and its grant is active, a page POST does not replace that grant:
  otherwise every user who opens the app would swap the stored tokens for their own.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from b24connector.bitrix24.errors import (
    Bitrix24Error,
    MalformedTokenPayload,
    TransientError,
    UnsafeEndpoint,
)
from b24connector.bitrix24.tokens import TokenSet
from b24connector.portals import InvalidPortal, PortalPolicy
from b24connector.problems import forbidden, invalid, unavailable
from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.store import hash_secret

if TYPE_CHECKING:
    # Annotations only: the OAuth client module loads requests, which the handler wires on first use.
    from b24connector.bitrix24.oauth import AppInfo

_MEMBER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_OPAQUE = re.compile(r"[\x21-\x7e]{1,512}\Z")  # tokens: printable ASCII without spaces
_MAX_ACCESS_LIFETIME = 7 * 86_400
EVENT_INSTALL = "ONAPPINSTALL"
EVENT_UNINSTALL = "ONAPPUNINSTALL"


class InstallVerifier(Protocol):
    """The OAuth server as install needs it (bitrix24.oauth.OAuthClient)."""

    def resolve_server(self, hint: str | None) -> str:
        """The allow-listed OAuth server base URL a hint names; raise UnsafeEndpoint otherwise."""
        ...

    def app_info(self, access_token: str, *, server_hint: str | None = None) -> AppInfo:
        """What the OAuth server says the access token belongs to."""
        ...


class StoredPortal(Protocol):
    """The parts of a stored portal record install reads (vault.Portal)."""

    @property
    def member_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def application_token_hash(self) -> str | None: ...
    @property
    def is_active(self) -> bool: ...


class InstallStore(Protocol):
    """The portal records (vault.PortalStore)."""

    def get(self, member_id: str, *, consistent: bool = False) -> StoredPortal | None:
        """The record of `member_id`, or None."""
        ...

    def save_grant(
        self, tokens: TokenSet, *, domain: str, application_token: str | None = None
    ) -> StoredPortal:
        """Store a new chain and the application_token's verifier (a replayed pair changes nothing)."""
        ...

    def mark_uninstalled(self, member_id: str, *, clean: bool) -> StoredPortal | None:
        """Drop the ciphertext (and with `clean` everything else) and flag the portal uninstalled."""
        ...


@dataclass(frozen=True, slots=True)
class InstallGrant:
    """Tokens and portal facts claimed by an install page POST or an ONAPPINSTALL event."""

    domain: str
    tokens: TokenSet
    server_hint: str | None
    application_token: str | None = field(default=None, repr=False)
    claimed_client_endpoint: str | None = None
    from_page: bool = False


@dataclass(frozen=True, slots=True)
class UninstallNotice:
    """An ONAPPUNINSTALL event's claims."""

    member_id: str
    application_token: str = field(repr=False)
    clean: bool


@dataclass(frozen=True, slots=True)
class Installed:
    """The outcome of an install: which portal, its stored version, and whether anything changed."""

    domain: str
    member_id: str
    version: int
    stored: bool


# --- parsing ------------------------------------------------------------------------------------


def _optional(fields: Mapping[str, Any], name: str, pattern: re.Pattern[str] = _OPAQUE) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise invalid(f"{_reason(name)}_invalid", f"Field {name} is malformed.")
    return value


def _required(fields: Mapping[str, Any], name: str, pattern: re.Pattern[str] = _OPAQUE) -> str:
    value = _optional(fields, name, pattern)
    if value is None:
        raise invalid(f"{_reason(name)}_missing", f"Field {name} is required.")
    return value


def _reason(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _lifetime(value: str | None, name: str) -> int:
    if value is None or not value.isdigit() or not 0 < int(value) <= _MAX_ACCESS_LIFETIME:
        raise invalid(f"{_reason(name)}_invalid", f"Field {name} must be a lifetime in seconds.")
    return int(value)


def _tokens(payload: Mapping[str, object], now: float) -> TokenSet:
    try:
        return TokenSet.from_payload(payload, now=now)
    except MalformedTokenPayload:
        raise invalid("tokens_invalid", "The install data has no usable tokens.") from None


def parse_install_page(
    query: Mapping[str, Any], form: Mapping[str, Any], policy: PortalPolicy, *, now: float
) -> InstallGrant:
    """The install page POST: DOMAIN etc. in the query, AUTH_ID/REFRESH_ID/... in the form body."""
    domain_raw = _required(query, "DOMAIN", re.compile(r".{1,300}\Z"))
    domain = _normalize(policy, domain_raw)
    placement_options = form.get("PLACEMENT_OPTIONS")
    if placement_options not in (None, ""):
        try:
            json.loads(str(placement_options))
        except ValueError:
            raise invalid("placement_options_invalid", "PLACEMENT_OPTIONS is not JSON.") from None
    member_id = _required(form, "member_id", _MEMBER_ID)
    access_token = _required(form, "AUTH_ID")
    refresh_token = _required(form, "REFRESH_ID")
    lifetime = _lifetime(_required(form, "AUTH_EXPIRES"), "AUTH_EXPIRES")
    scope = _optional(form, "APPLICATION_SCOPE", re.compile(r"[\w,. -]{1,500}\Z"))
    status = _optional(form, "status", re.compile(r"[A-Z]\Z"))
    tokens = _tokens(
        {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "member_id": member_id,
            "expires_in": lifetime,
            "scope": scope or "",
            "status": status or "",
        },
        now,
    )
    return InstallGrant(
        domain=domain,
        tokens=tokens,
        # Older portals omit SERVER_ENDPOINT (fact sheet 3.2): then the default OAuth server is asked.
        server_hint=_optional(form, "SERVER_ENDPOINT"),
        # ... and APPLICATION_TOKEN, which then arrives with ONAPPINSTALL.
        application_token=_optional(form, "APPLICATION_TOKEN"),
        from_page=True,
    )


def _auth_block(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    auth = payload.get("auth")
    if not isinstance(auth, dict):
        raise invalid("auth_missing", "The event has no auth block.")
    return auth


def parse_install_event(payload: Mapping[str, Any], policy: PortalPolicy, *, now: float) -> InstallGrant:
    """ONAPPINSTALL: form fields `auth[...]` (values strings or numbers), extra fields tolerated."""
    auth = _auth_block(payload)
    domain_raw = _required(auth, "domain", re.compile(r".{1,300}\Z"))
    domain = _normalize(policy, domain_raw)
    _required(auth, "member_id", _MEMBER_ID)
    _required(auth, "access_token")
    _required(auth, "refresh_token")
    for name in ("expires", "expires_in", "user_id"):
        value = auth.get(name)
        if value not in (None, "") and not (isinstance(value, str) and value.isdigit()):
            raise invalid(f"auth_{name}_invalid", f"Field auth[{name}] must be a number.")
    if auth.get("expires") in (None, "") and auth.get("expires_in") not in (None, ""):
        _lifetime(str(auth["expires_in"]), "auth[expires_in]")
    tokens = _tokens(auth, now)
    return InstallGrant(
        domain=domain,
        tokens=tokens,
        server_hint=_optional(auth, "server_endpoint"),
        application_token=_required(auth, "application_token"),
        claimed_client_endpoint=_optional(auth, "client_endpoint"),
    )


def parse_uninstall_event(payload: Mapping[str, Any]) -> UninstallNotice:
    """ONAPPUNINSTALL: `auth[member_id]`, `auth[application_token]`, `data[CLEAN]`."""
    auth = _auth_block(payload)
    member_id = _required(auth, "member_id", _MEMBER_ID)
    token = _required(auth, "application_token")
    data = payload.get("data")
    clean_raw = data.get("CLEAN") if isinstance(data, dict) else None
    return UninstallNotice(
        member_id=member_id, application_token=token, clean=str(clean_raw).upper() in {"1", "Y"}
    )


def _normalize(policy: PortalPolicy, raw: str) -> str:
    try:
        return policy.normalize(raw)
    except InvalidPortal as exc:
        raise invalid("domain_invalid", f"The portal address is not allowed ({exc.reason}).") from None


# --- use case -----------------------------------------------------------------------------------


class Installer:
    """Verifies install claims with app.info and stores them; authenticates uninstalls."""

    def __init__(
        self,
        policy: PortalPolicy,
        verifier: InstallVerifier,
        store: InstallStore,
        *,
        client_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._verifier = verifier
        self._store = store
        self._client_id = client_id
        self._clock = clock

    def now(self) -> float:
        """The installer's clock (token expiry is computed from it)."""
        return self._clock()

    def install(self, grant: InstallGrant) -> Installed:
        """Verify a claimed grant with app.info, then store it (or keep the stored one, see module doc)."""
        try:
            server = self._verifier.resolve_server(grant.server_hint)
        except UnsafeEndpoint:
            raise forbidden("server_not_allowed", "The OAuth server is not one we trust.") from None
        info = self._app_info(grant.tokens.access_token, server)
        client_endpoint = self._check(grant, info)
        if grant.from_page and info.installed:
            current = self._current(grant.tokens.member_id)
            if current is not None and current.is_active:
                return Installed(grant.domain, current.member_id, current.version, stored=False)
        tokens = replace(
            grant.tokens,
            client_endpoint=client_endpoint,
            server_endpoint=f"{server}/rest/",
            scope=grant.tokens.scope or info.scope,
            status=info.status or grant.tokens.status,
            user_id=info.user_id if info.user_id is not None else grant.tokens.user_id,
        )
        try:
            portal = self._store.save_grant(
                tokens, domain=grant.domain, application_token=grant.application_token
            )
        except VaultUnavailable:
            raise unavailable(
                "storage_unavailable", "The installation could not be saved; try again."
            ) from None
        return Installed(grant.domain, portal.member_id, portal.version, stored=True)

    def uninstall(self, notice: UninstallNotice) -> None:
        """Mark a portal uninstalled when the application_token proves the event is genuine."""
        current = self._current(notice.member_id)
        stored = current.application_token_hash if current is not None else None
        received = hash_secret(notice.application_token)
        # Compare even when nothing is stored, so timing does not tell known from unknown portals.
        matches = hmac.compare_digest((stored or "").encode("utf-8"), received.encode("utf-8"))
        if current is None or not stored or not matches:
            raise forbidden("application_token_mismatch", "The event could not be authenticated.")
        try:
            self._store.mark_uninstalled(notice.member_id, clean=notice.clean)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "The uninstall could not be saved.") from None

    def _current(self, member_id: str) -> StoredPortal | None:
        try:
            return self._store.get(member_id, consistent=True)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "Please try again.") from None

    def _app_info(self, access_token: str, server: str) -> AppInfo:
        try:
            return self._verifier.app_info(access_token, server_hint=server)
        except TransientError:
            raise unavailable(
                "oauth_unavailable", "Bitrix24 could not confirm the installation now."
            ) from None
        except Bitrix24Error as exc:
            raise forbidden(
                "token_rejected", f"Bitrix24 did not confirm the access token ({exc.code})."
            ) from None

    def _check(self, grant: InstallGrant, info: AppInfo) -> str:
        """The verified client endpoint, after app.info agreed with every claim."""
        if not hmac.compare_digest(info.client_id, self._client_id):
            raise forbidden("client_mismatch", "The access token belongs to another application.")
        if info.member_id != grant.tokens.member_id:
            raise forbidden("member_mismatch", "The access token belongs to another portal.")
        try:
            info_domain = self._policy.normalize(info.domain)
        except InvalidPortal:
            info_domain = None
        if info_domain != grant.domain:
            raise forbidden("domain_mismatch", "The access token belongs to another portal address.")
        try:
            endpoint = self._policy.check_client_endpoint(info.client_endpoint, grant.domain)
            if grant.claimed_client_endpoint is not None:
                claimed = self._policy.check_client_endpoint(grant.claimed_client_endpoint, grant.domain)
                if claimed != endpoint:
                    raise InvalidPortal("host_mismatch")
        except InvalidPortal:
            raise forbidden("endpoint_mismatch", "The portal's REST endpoint does not match.") from None
        return endpoint
