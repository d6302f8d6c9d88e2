"""The app lifecycle as portals run it (docs/bitrix24-facts.md#f-app-1 to #f-app-10, #f-events-3).

What arrives, and how far each is trusted:
- The install page POST (UI apps, in the portal's frame) carries the opening user's pair; older portals
  send no SERVER_ENDPOINT, APPLICATION_TOKEN or APPLICATION_SCOPE. Verified inline (a person waits).
- ONAPPINSTALL (API-only apps) and ONAPPUSERREADY (Market apps: a system-user pair in `data`, the
  installer's pair and the application token in `auth`) come once, never again, possibly late. They
  are journaled (KMS-sealed, SQS) before any network call, answered at once, and verified and applied
  by LifecycleFunction with retries; a late event's expired access token is renewed with its own
  refresh token first.
- ONAPPUNINSTALL carries no token, only `auth[application_token]`, and reaches us only through the
  event.bind subscription the connector makes after every grant (subscriptions.py).

Every claimed pair is only a claim until the OAuth server's app.info, asked on an allow-listed server,
confirms the same app, portal and REST endpoint. Whose pair it is then decides whether it may be stored:
a portal administrator (REST user.admin) or the app's system user outranks an ordinary employee, and an
active grant is never replaced by one of a lower rank (the vault enforces it in its compare-and-set).
The application token is no proof: the newer install page posts it into the frame of every user who
opens the app, so employees can read it. It is stored (as a SHA-256 verifier, only with an administrator
or system grant) for reference, and every uninstall is confirmed with Bitrix24 through the stored grant
before anything changes.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from b24connector.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    InvalidClient,
    InvalidToken,
    MalformedTokenPayload,
    NotInstalled,
    OAuthError,
    TransientError,
    UnsafeEndpoint,
)
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.tokens import parse_token_payload
from b24connector.identifiers import MEMBER_ID
from b24connector.observability import count, logger
from b24connector.portals import InvalidPortal, PortalPolicy
from b24connector.problems import Problem, forbidden, invalid, unavailable
from b24connector.tokens import TokenSet
from b24connector.vault.errors import GrantRefused, ReauthRequired, VaultError, VaultUnavailable
from b24connector.vault.hashing import hash_secret
from b24connector.vault.journal import JOB_GRANT, JOB_SUBSCRIBE, JOB_UNINSTALL, JobSink, LifecycleJob
from b24connector.vault.models import ROLE_ADMIN, ROLE_RANK, ROLE_SYSTEM, ROLE_USER

if TYPE_CHECKING:
    # Annotations only: the OAuth client module loads requests, which the handler wires on first use.
    from b24connector.bitrix24.oauth import AppInfo

_OPAQUE = re.compile(r"[\x21-\x7e]{1,512}\Z")  # tokens: printable ASCII without spaces
_DIGITS = re.compile(r"[0-9]{1,12}\Z")  # ASCII digits only: str.isdigit() also takes "²" and "٣"
_SCOPE = re.compile(r"[\w,. -]{1,500}\Z", re.ASCII)
_MAX_ACCESS_LIFETIME = 7 * 86_400
_MAX_PLACEMENT_OPTIONS = 16 * 1024
EVENT_INSTALL = "ONAPPINSTALL"
EVENT_USER_READY = "ONAPPUSERREADY"
EVENT_UNINSTALL = "ONAPPUNINSTALL"
# The events that hand us a token pair exactly once: journaled before anything else happens.
JOURNALED_EVENTS = frozenset({EVENT_INSTALL, EVENT_USER_READY})
# What the OAuth server says when the app is gone from the portal (docs/bitrix24-facts.md#f-oauth-9).
_REMOVED_CODES = frozenset({"NOT_INSTALLED", "ERROR_OAUTH", "APPLICATION_NOT_FOUND"})


class InstallVerifier(Protocol):
    """The OAuth server as install needs it (bitrix24.oauth.OAuthClient)."""

    def resolve_server(self, hint: str | None) -> str:
        """The allow-listed OAuth server base URL a hint names; raise UnsafeEndpoint otherwise."""
        ...

    def app_info(self, access_token: str, *, server_hint: str | None = None) -> AppInfo:
        """What the OAuth server says the access token belongs to."""
        ...

    def refresh(self, refresh_token: str, *, server_hint: str | None = None) -> TokenSet:
        """Exchange a refresh token for a new pair (one POST, never retried)."""
        ...


class RoleProbe(Protocol):
    """Asks the portal whether a pair's user is an administrator (REST user.admin)."""

    def is_admin(self, client_endpoint: str, domain: str, access_token: str) -> bool:
        """True for an administrator; TransientError when the portal could not say."""
        ...


class RemovalProbe(Protocol):
    """Asks Bitrix24, with a portal's stored grant, whether the app is still installed there."""

    def app_removed(self, member_id: str) -> bool:
        """True only when Bitrix24 says the app is not installed; TransientError when it could not say."""
        ...


class StoredPortal(Protocol):
    """The parts of a stored portal record install reads (vault.Portal)."""

    @property
    def member_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def health(self) -> str: ...
    @property
    def application_token_hash(self) -> str | None: ...
    @property
    def is_active(self) -> bool: ...
    @property
    def role_rank(self) -> int: ...
    @property
    def grant_role(self) -> str: ...


class InstallStore(Protocol):
    """The portal records (vault.PortalStore)."""

    def get(self, member_id: str, *, consistent: bool = False) -> StoredPortal | None:
        """The record of `member_id`, or None."""
        ...

    def save_grant(
        self, tokens: TokenSet, *, domain: str, role: str, application_token: str | None = None
    ) -> StoredPortal:
        """Store a new chain; GrantRefused when an active grant of a higher rank holds the portal."""
        ...

    def mark_uninstalled(self, member_id: str, *, clean: bool) -> StoredPortal | None:
        """Drop the ciphertext (and with `clean` everything else) and flag the portal uninstalled."""
        ...

    def claim_uninstall_check(self, member_id: str, *, min_gap_seconds: float) -> bool:
        """Claim the right to check an unproven uninstall with Bitrix24 now."""
        ...


@dataclass(frozen=True, slots=True)
class InstallGrant:
    """Tokens and portal facts claimed by an install page POST or one pair of an install event."""

    domain: str
    tokens: TokenSet
    server_hint: str | None
    application_token: str | None = field(default=None, repr=False)
    claimed_client_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class InstallEvent:
    """ONAPPINSTALL (`grant` = the installer's pair) or ONAPPUSERREADY (`grant` = the system user's
    pair from `data`, `installer` = the installing employee's pair and application token from `auth`)."""

    name: str
    grant: InstallGrant
    installer: InstallGrant | None = None

    @property
    def member_id(self) -> str:
        """The portal the event is about."""
        return self.grant.tokens.member_id

    @property
    def application_token(self) -> str | None:
        """The application token the event carries (in `auth`)."""
        return (self.installer or self.grant).application_token


@dataclass(frozen=True, slots=True)
class UninstallNotice:
    """An ONAPPUNINSTALL event's claims."""

    member_id: str
    application_token: str = field(repr=False)
    clean: bool


class Outcome(StrEnum):
    """How a lifecycle step ended (also the metric and log vocabulary)."""

    STORED = "stored"  # a new grant is the portal's grant
    KEPT = "kept"  # an install page of a user who does not outrank the stored grant: nothing changed
    REPLAYED = "replayed"  # the same pair again
    REFUSED = "refused"  # a lower-ranked pair tried to replace an active grant: nothing changed
    REJOURNALED = "rejournaled"  # a late event's pair was renewed and journaled again to be applied
    UNINSTALLED = "uninstalled"
    UNINSTALL_QUEUED = "uninstall_queued"  # unproven: Bitrix24 is asked first, asynchronously
    UNINSTALL_REJECTED = "uninstall_rejected"  # Bitrix24 says the app is still installed


@dataclass(frozen=True, slots=True)
class Installed:
    """The outcome of an install: which portal, whose grant, and what changed."""

    domain: str
    member_id: str
    outcome: Outcome
    role: str = ROLE_USER
    version: int = 0

    @property
    def stored(self) -> bool:
        """True when the portal's grant changed."""
        return self.outcome is Outcome.STORED


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
    if value is None or not _DIGITS.match(value) or not 0 < int(value) <= _MAX_ACCESS_LIFETIME:
        raise invalid(f"{_reason(name)}_invalid", f"Field {name} must be a lifetime in seconds.")
    return int(value)


def _tokens(payload: Mapping[str, object], now: float) -> TokenSet:
    try:
        return parse_token_payload(payload, now=now)
    except MalformedTokenPayload:
        raise invalid("tokens_invalid", "The install data has no usable tokens.") from None


def _check_placement_options(raw: object) -> None:
    if raw in (None, ""):
        return
    text = str(raw)
    # Bounded before parsing: json.loads recurses per nesting level.
    if len(text) > _MAX_PLACEMENT_OPTIONS or text.count("[") + text.count("{") > 64:
        raise invalid("placement_options_invalid", "PLACEMENT_OPTIONS is too large.")
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        raise invalid("placement_options_invalid", "PLACEMENT_OPTIONS is not JSON.") from None


def parse_install_page(
    query: Mapping[str, Any], form: Mapping[str, Any], policy: PortalPolicy, *, now: float
) -> InstallGrant:
    """The install page POST: DOMAIN etc. in the query, AUTH_ID/REFRESH_ID/... in the form body."""
    domain = _normalize(policy, _required(query, "DOMAIN", re.compile(r".{1,300}\Z")))
    _check_placement_options(form.get("PLACEMENT_OPTIONS"))
    member_id = _required(form, "member_id", MEMBER_ID)
    access_token = _required(form, "AUTH_ID")
    refresh_token = _required(form, "REFRESH_ID")
    lifetime = _lifetime(_required(form, "AUTH_EXPIRES", re.compile(r".{1,32}\Z")), "AUTH_EXPIRES")
    scope = _optional(form, "APPLICATION_SCOPE", _SCOPE)
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
        # Older portals omit SERVER_ENDPOINT (docs/bitrix24-facts.md#f-app-5): then the default OAuth server.
        server_hint=_optional(form, "SERVER_ENDPOINT"),
        # ... and APPLICATION_TOKEN: such a portal never gives a UI app its application token.
        application_token=_optional(form, "APPLICATION_TOKEN"),
    )


def _block(payload: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    block = payload.get(name)
    if not isinstance(block, dict):
        raise invalid(f"{name}_missing", f"The event has no {name} block.")
    return block


def _pair(block: Mapping[str, Any], prefix: str, now: float, *, need_app_token: bool) -> dict[str, Any]:
    """The token fields of one event block, checked: ASCII digits only, bounded numbers."""
    _required(block, "member_id", MEMBER_ID)
    _required(block, "access_token")
    _required(block, "refresh_token")
    fields: dict[str, Any] = {
        name: block.get(name)
        for name in ("access_token", "refresh_token", "member_id", "scope", "status", "server_endpoint")
    }
    for name in ("expires", "expires_in", "user_id"):
        value = block.get(name)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _DIGITS.match(value):
            raise invalid(f"{prefix}_{name}_invalid", f"Field {prefix}[{name}] must be a number.")
        fields[name] = value
    if fields.get("expires") is None:
        _lifetime(fields.get("expires_in"), f"{prefix}[expires_in]")
    elif not int(fields["expires"]) <= now + _MAX_ACCESS_LIFETIME:
        raise invalid(f"{prefix}_expires_invalid", f"Field {prefix}[expires] is not a sane time.")
    if fields.get("scope") is not None:
        _optional(block, "scope", _SCOPE)
    if need_app_token:
        _required(block, "application_token")
    return fields


def _portal_host(policy: PortalPolicy, client_endpoint: str | None) -> str:
    """The portal host of a claimed client endpoint (ONAPPUSERREADY's `domain` is the OAuth server)."""
    if client_endpoint is None:
        raise invalid("client_endpoint_missing", "The event names no client endpoint.")
    try:
        host = policy.normalize(client_endpoint.partition("://")[2].partition("/")[0])
        policy.check_client_endpoint(client_endpoint, host)
    except InvalidPortal as exc:
        raise invalid("domain_invalid", f"The portal address is not allowed ({exc.reason}).") from None
    return host


def _event_grant(
    block: Mapping[str, Any], prefix: str, policy: PortalPolicy, now: float, *, domain: str | None
) -> InstallGrant:
    fields = _pair(block, prefix, now, need_app_token=False)
    claimed_endpoint = _optional(block, "client_endpoint")
    return InstallGrant(
        domain=domain if domain is not None else _portal_host(policy, claimed_endpoint),
        tokens=_tokens(fields, now),
        server_hint=_optional(block, "server_endpoint"),
        application_token=_optional(block, "application_token"),
        claimed_client_endpoint=claimed_endpoint,
    )


def parse_install_event(payload: Mapping[str, Any], policy: PortalPolicy, *, now: float) -> InstallEvent:
    """ONAPPINSTALL or ONAPPUSERREADY, form fields `auth[...]`/`data[...]` (strings), extras tolerated."""
    name = str(payload.get("event") or "").upper()
    auth = _block(payload, "auth")
    if name == EVENT_INSTALL:
        _required(auth, "application_token")
        domain = _normalize(policy, _required(auth, "domain", re.compile(r".{1,300}\Z")))
        return InstallEvent(name, _event_grant(auth, "auth", policy, now, domain=domain))
    if name == EVENT_USER_READY:
        data = _block(payload, "data")
        _required(auth, "application_token")
        # Both blocks' `domain` is the OAuth server's host (docs/bitrix24-facts.md#f-app-9): the portal is the endpoint's.
        system = _event_grant(data, "data", policy, now, domain=None)
        installer = _event_grant(auth, "auth", policy, now, domain=system.domain)
        if installer.tokens.member_id != system.tokens.member_id:
            raise invalid("member_mismatch", "The event's two grants name different portals.")
        return InstallEvent(name, replace(system, application_token=None), installer)
    raise invalid("event_unsupported", "This event is not handled here.")


def parse_uninstall_event(payload: Mapping[str, Any]) -> UninstallNotice:
    """ONAPPUNINSTALL: `auth[member_id]`, `auth[application_token]`, `data[CLEAN]`."""
    auth = _block(payload, "auth")
    member_id = _required(auth, "member_id", MEMBER_ID)
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


# --- the journal's view of events -----------------------------------------------------------------


def _grant_facts(grant: InstallGrant) -> dict[str, Any]:
    tokens = grant.tokens
    return {
        "domain": grant.domain,
        "server_hint": grant.server_hint,
        "claimed_client_endpoint": grant.claimed_client_endpoint,
        "expires_at": tokens.expires_at,
        "obtained_at": tokens.obtained_at,
        "scope": tokens.scope,
        "status": tokens.status,
        "user_id": tokens.user_id,
        "client_endpoint": tokens.client_endpoint,
        "server_endpoint": tokens.server_endpoint,
    }


def _grant_secrets(grant: InstallGrant, prefix: str) -> dict[str, str]:
    secrets = {f"{prefix}.access": grant.tokens.access_token, f"{prefix}.refresh": grant.tokens.refresh_token}
    if grant.application_token:
        secrets[f"{prefix}.app"] = grant.application_token
    return secrets


def event_job(event: InstallEvent) -> LifecycleJob:
    """The journal entry of an install event."""
    facts: dict[str, Any] = {"event": event.name, "grant": _grant_facts(event.grant)}
    secrets = _grant_secrets(event.grant, "grant")
    if event.installer is not None:
        facts["installer"] = _grant_facts(event.installer)
        secrets |= _grant_secrets(event.installer, "installer")
    return LifecycleJob(JOB_GRANT, event.member_id, facts=facts, secrets=secrets)


def _grant_of(
    facts: Mapping[str, Any], secrets: Mapping[str, str], prefix: str, member_id: str
) -> InstallGrant:
    tokens = TokenSet(
        access_token=secrets[f"{prefix}.access"],
        refresh_token=secrets[f"{prefix}.refresh"],
        expires_at=int(facts["expires_at"]),
        member_id=member_id,
        client_endpoint=str(facts.get("client_endpoint") or ""),
        server_endpoint=str(facts.get("server_endpoint") or ""),
        scope=str(facts.get("scope") or ""),
        status=str(facts.get("status") or ""),
        user_id=facts.get("user_id") if isinstance(facts.get("user_id"), int) else None,
        obtained_at=int(facts.get("obtained_at") or 0),
    )
    return InstallGrant(
        domain=str(facts["domain"]),
        tokens=tokens,
        server_hint=facts.get("server_hint"),
        application_token=secrets.get(f"{prefix}.app"),
        claimed_client_endpoint=facts.get("claimed_client_endpoint"),
    )


def event_of(job: LifecycleJob) -> InstallEvent:
    """The install event a journal entry holds; ValueError when it is malformed."""
    try:
        facts = job.facts
        grant = _grant_of(facts["grant"], job.secrets, "grant", job.member_id)
        installer = (
            _grant_of(facts["installer"], job.secrets, "installer", job.member_id)
            if "installer" in facts
            else None
        )
        name = str(facts["event"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed install journal entry ({type(exc).__name__})") from None
    if name not in JOURNALED_EVENTS:
        raise ValueError("install journal entry names an unknown event")
    return InstallEvent(name, grant, installer)


def uninstall_job(notice: UninstallNotice) -> LifecycleJob:
    """The journal entry of an uninstall Bitrix24 must confirm."""
    return LifecycleJob(
        JOB_UNINSTALL,
        notice.member_id,
        facts={"clean": notice.clean},
        secrets={"application_token": notice.application_token},
    )


def notice_of(job: LifecycleJob) -> UninstallNotice:
    """The uninstall notice a journal entry holds."""
    return UninstallNotice(
        member_id=job.member_id,
        application_token=job.secrets.get("application_token", ""),
        clean=bool(job.facts.get("clean")),
    )


def subscribe_job(member_id: str) -> LifecycleJob:
    """The journal entry asking for the portal's event.bind subscriptions."""
    return LifecycleJob(JOB_SUBSCRIBE, member_id)


# --- use case -----------------------------------------------------------------------------------


class _LateEvent(Exception):
    """app.info says the claimed access token expired: the event came late; renew it and ask again."""


@dataclass(frozen=True, slots=True)
class _Verified:
    tokens: TokenSet  # with the verified endpoints
    info: AppInfo
    renewed: bool  # the claimed access token had expired and was renewed with the claimed refresh token


class Installer:
    """Verifies install claims, decides whose grant a portal keeps, and authenticates uninstalls."""

    def __init__(
        self,
        policy: PortalPolicy,
        verifier: InstallVerifier,
        store: InstallStore,
        *,
        client_id: str,
        journal: JobSink,
        roles: RoleProbe,
        removal: RemovalProbe | None = None,
        uninstall_check_gap_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._verifier = verifier
        self._store = store
        self._client_id = client_id
        self._journal = journal
        self._roles = roles
        self._removal = removal
        self._uninstall_gap = uninstall_check_gap_seconds
        self._clock = clock

    def now(self) -> float:
        """The installer's clock (token expiry is computed from it)."""
        return self._clock()

    # --- one-shot events: accepted durably, applied asynchronously ----------------------------------

    def accept(self, event: InstallEvent) -> None:
        """Journal an install event before any network call (the answer to Bitrix24 follows at once)."""
        try:
            self._journal.send(event_job(event))
        except VaultUnavailable:
            raise unavailable("journal_unavailable", "The event could not be accepted; try again.") from None

    def apply(self, event: InstallEvent) -> Installed:
        """Verify a journaled install event and store its grant (LifecycleFunction).

        Problem(FORBIDDEN) when a claim does not hold (nothing changes; retrying cannot help);
        TransientError or VaultUnavailable when Bitrix24 or AWS failed (the journal retries).
        """
        system = self._verify(event.grant, renew=True)
        installer = self._verify(event.installer, renew=True) if event.installer is not None else None
        if system.renewed or (installer is not None and installer.renewed):
            renewed = InstallEvent(
                event.name,
                replace(event.grant, tokens=system.tokens),
                None
                if installer is None or event.installer is None
                else replace(event.installer, tokens=installer.tokens),
            )
            # The claimed refresh token is spent: keep the new pair durably before anything else.
            try:
                self._journal.send(event_job(renewed))
            except VaultUnavailable:
                logger.warning("renewed install event not journaled; applying it now", extra=_who(event))
            else:
                return Installed(event.grant.domain, event.member_id, Outcome.REJOURNALED)
        role = self._event_role(event, system, installer)
        return self._store_grant(event.grant.domain, system.tokens, role, event.application_token)

    def install_page(self, grant: InstallGrant) -> Installed:
        """The install page POST: verified and stored inline, unless the stored grant holds its place.

        Every user who opens the app may post this page (when the app's main page shares its URL), so
        the stored grant is kept when the app is installed and the newcomer does not outrank it.
        """
        verified = self._verify(grant, renew=False)
        try:
            role = self._role_of(verified.tokens, grant.domain)
        except TransientError:
            role = ROLE_USER  # could not prove more: the lowest rank (it replaces nothing it must not)
        current = self._current(grant.tokens.member_id)
        if (
            current is not None
            and current.is_active
            and verified.info.installed
            and current.role_rank >= ROLE_RANK[role]
        ):
            return Installed(
                grant.domain, current.member_id, Outcome.KEPT, current.grant_role, current.version
            )
        return self._store_grant(grant.domain, verified.tokens, role, grant.application_token)

    def store_authorized(self, tokens: TokenSet, domain: str) -> Installed:
        """Store a pair from the full OAuth flow (callback), ranked by its user (one user.admin call)."""
        try:
            role = self._role_of(tokens, domain)
        except TransientError:
            role = ROLE_USER
        return self._store_grant(domain, tokens, role, None)

    # --- uninstall ---------------------------------------------------------------------------------

    def uninstall(self, notice: UninstallNotice) -> Outcome:
        """Journal an ONAPPUNINSTALL for Bitrix24 to confirm; nothing changes before it does.

        The application token proves nothing on its own: the newer install page posts it into the frame
        of every user who opens the app (docs/bitrix24-facts.md#f-app-6), so any employee can read it.
        Every uninstall is therefore confirmed with Bitrix24 through the stored grant (confirm_uninstall).
        """
        current = self._current(notice.member_id)
        if current is None:
            raise forbidden("portal_unknown", "The event names no portal connected here.")
        if current.health == "uninstalled":
            # Already applied (a replay, or a second binding's copy): nothing to confirm, nothing to do.
            return Outcome.UNINSTALLED
        if self._removal is None:
            raise forbidden("uninstall_not_confirmed", "There is no way to confirm the uninstall here.")
        try:
            self._journal.send(uninstall_job(notice))
        except VaultUnavailable:
            raise unavailable("journal_unavailable", "The event could not be accepted; try again.") from None
        return Outcome.UNINSTALL_QUEUED

    def confirm_uninstall(self, notice: UninstallNotice) -> Outcome:
        """Ask Bitrix24 with the stored grant whether the app is gone; apply the uninstall only if so.

        Problem(FORBIDDEN) when Bitrix24 says the app is still installed (nothing changes); TransientError
        or VaultUnavailable when it could not say, or another check of this portal ran within the last
        `uninstall_check_gap_seconds` (the journal retries later).
        """
        current = self._current(notice.member_id)
        if current is None or current.health == "uninstalled" or self._removal is None:
            raise forbidden("uninstall_not_confirmed", "There is no grant to confirm the uninstall with.")
        if not self._store.claim_uninstall_check(notice.member_id, min_gap_seconds=self._uninstall_gap):
            raise VaultUnavailable("an uninstall check of this portal ran moments ago")
        if not self._removal.app_removed(notice.member_id):
            count("UninstallRejected")
            raise forbidden("uninstall_not_confirmed", "Bitrix24 says the app is still installed.")
        # Bitrix24 confirmed that the app is gone, not who sent this notice. CLEAN=1 (forget the tenant's
        # data) is honoured only from a notice carrying the stored application token, when one is stored:
        # a blind forger's CLEAN=1 queued beside the administrator's "keep data" must not win.
        stored = current.application_token_hash
        proven = not stored or hmac.compare_digest(
            stored.encode("utf-8"), hash_secret(notice.application_token).encode("utf-8")
        )
        self._mark_uninstalled(replace(notice, clean=notice.clean and proven))
        return Outcome.UNINSTALLED

    # --- internals ---------------------------------------------------------------------------------

    def _mark_uninstalled(self, notice: UninstallNotice) -> None:
        try:
            self._store.mark_uninstalled(notice.member_id, clean=notice.clean)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "The uninstall could not be saved.") from None

    def _store_grant(
        self, domain: str, tokens: TokenSet, role: str, application_token: str | None
    ) -> Installed:
        try:
            portal = self._store.save_grant(
                tokens, domain=domain, role=role, application_token=application_token
            )
        except GrantRefused as refused:
            logger.warning(
                "grant refused",
                extra={"member_id": tokens.member_id, "held_by": refused.held_by, "offered_by": role},
            )
            count("GrantRefused")
            return Installed(domain, tokens.member_id, Outcome.REFUSED, role)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "The grant could not be saved; try again.") from None
        self.request_subscriptions(tokens.member_id)
        return Installed(domain, portal.member_id, Outcome.STORED, role, portal.version)

    def request_subscriptions(self, member_id: str) -> None:
        """Queue the portal's event.bind check; a failure is logged and counted, never raised."""
        try:
            self._journal.send(subscribe_job(member_id))
        except VaultUnavailable:
            logger.warning("subscription check not queued", extra={"member_id": member_id})
            count("SubscriptionNotQueued")

    def _event_role(self, event: InstallEvent, system: _Verified, installer: _Verified | None) -> str:
        """Whose grant an event carries: the system user's when the event proves it came from Bitrix24."""
        if event.name == EVENT_USER_READY and installer is not None:
            # The data pair is the system user's only if the event is genuine: its installer pair must be
            # an administrator's. The application token cannot prove it: employees can read it from the
            # app frame (docs/bitrix24-facts.md#f-app-6).
            if self._role_of(installer.tokens, event.grant.domain) == ROLE_ADMIN:
                return ROLE_SYSTEM
            count("SystemGrantUnproven")
        return self._role_of(system.tokens, event.grant.domain)

    def _role_of(self, tokens: TokenSet, domain: str) -> str:
        try:
            admin = self._roles.is_admin(tokens.client_endpoint, domain, tokens.access_token)
        except TransientError:
            raise
        except Bitrix24Error:
            admin = False  # the portal refused to say: not proven an administrator
        return ROLE_ADMIN if admin else ROLE_USER

    def _current(self, member_id: str) -> StoredPortal | None:
        try:
            return self._store.get(member_id, consistent=True)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "Please try again.") from None

    def _verify(self, grant: InstallGrant, *, renew: bool) -> _Verified:
        try:
            server = self._verifier.resolve_server(grant.server_hint)
        except UnsafeEndpoint:
            raise forbidden("server_not_allowed", "The OAuth server is not one we trust.") from None
        tokens, renewed = grant.tokens, False
        try:
            info = self._app_info(tokens.access_token, server, late_ok=renew)
        except _LateEvent:
            # A late event: its refresh token still proves the grant (docs/bitrix24-facts.md#f-events-2).
            tokens, renewed = self._renew(grant, server), True
            info = self._app_info(tokens.access_token, server)
        endpoint = self._check(grant, info)
        verified = replace(
            tokens,
            client_endpoint=endpoint,
            server_endpoint=f"{server}/rest/",
            scope=tokens.scope or info.scope,
            status=info.status or tokens.status,
            user_id=info.user_id if info.user_id is not None else tokens.user_id,
        )
        return _Verified(verified, info, renewed)

    def _renew(self, grant: InstallGrant, server: str) -> TokenSet:
        try:
            fresh = self._verifier.refresh(grant.tokens.refresh_token, server_hint=server)
        except TransientError:
            raise
        except Bitrix24Error as exc:
            raise forbidden(
                "token_rejected", f"Bitrix24 did not renew the late event's grant ({exc.code})."
            ) from None
        if fresh.member_id != grant.tokens.member_id:
            raise forbidden("member_mismatch", "The renewed grant belongs to another portal.")
        return fresh

    def _app_info(self, access_token: str, server: str, *, late_ok: bool = False) -> AppInfo:
        """What app.info says of a claimed token; _LateEvent for an expired one when `late_ok`."""
        try:
            return self._verifier.app_info(access_token, server_hint=server)
        except ExpiredToken:
            if late_ok:
                raise _LateEvent from None
            raise forbidden(
                "token_rejected", "Bitrix24 did not confirm the access token (expired)."
            ) from None
        except TransientError:
            raise
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


def _who(event: InstallEvent) -> dict[str, Any]:
    return {"member_id": event.member_id, "event": event.name}


# --- adapters -------------------------------------------------------------------------------------


class RestRoleProbe:
    """RoleProbe over the REST client: `user.admin` with the pair itself (docs/bitrix24-facts.md#f-user-1)."""

    def __init__(self, rest: Any) -> None:
        self._rest = rest

    def is_admin(self, client_endpoint: str, domain: str, access_token: str) -> bool:
        """True when the portal says the token's user is an administrator."""
        answer = self._rest.call(PortalContext(client_endpoint, access_token, domain=domain), "user.admin")
        result = answer.result
        if isinstance(result, str):
            return result.strip().lower() in {"true", "y", "1"}
        return result is True


class StoredGrantRemovalProbe:
    """RemovalProbe over the stored grant: app.info on the OAuth server, renewing a dead access token."""

    def __init__(self, store: Any, verifier: InstallVerifier, coordinator: Any) -> None:
        self._store = store
        self._verifier = verifier
        self._coordinator = coordinator

    def app_removed(self, member_id: str) -> bool:
        """True only when Bitrix24 says the app is not installed on the portal."""
        portal = self._store.get(member_id, consistent=True)
        if portal is None or portal.token_ciphertext is None:
            return False
        try:
            tokens = self._store.tokens(portal)
        except VaultError:
            return False
        removed = self._ask(tokens.access_token, portal.server_endpoint)
        if removed is not None:
            return removed
        # The stored access token is expired or was refreshed away: renew it through the coordinator
        # (leased, committed). A refresh answering NOT_INSTALLED is itself the confirmation.
        try:
            fresh = self._coordinator.fresh_access_token(member_id, tokens.access_token)
        except ReauthRequired as dead:
            return dead.reason is not None and dead.reason.upper() in _REMOVED_CODES
        except VaultError as exc:
            if exc.retryable:
                raise
            return False
        return bool(self._ask(fresh.access_token, portal.server_endpoint))

    def _ask(self, access_token: str, server_endpoint: str | None) -> bool | None:
        """True: removed; False: installed; None: this token cannot tell (expired or refreshed away)."""
        try:
            info = self._verifier.app_info(access_token, server_hint=server_endpoint)
        except NotInstalled:
            return True
        except (ExpiredToken, InvalidToken, InvalidClient):
            return None
        except TransientError:
            raise
        except OAuthError as exc:
            return exc.code.upper() in _REMOVED_CODES
        except Bitrix24Error:
            return None
        return not info.installed


def problem_is_final(exc: BaseException) -> bool:
    """True for a refusal that no retry can change (a forged or mismatched claim)."""
    return isinstance(exc, Problem) and exc.kind.value in {"invalid", "forbidden", "upstream_rejected"}
