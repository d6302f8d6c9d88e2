"""The install lifecycle's vocabulary: event names, the claims as parsed, outcomes, and the ports the use case needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from b24connector.problems import Problem
from b24connector.tokens import TokenSet
from b24connector.vault.models import ROLE_USER

if TYPE_CHECKING:
    # Annotations only: the OAuth client module loads requests, which the handler wires on first use.
    from b24connector.bitrix24.oauth import AppInfo


EVENT_INSTALL = "ONAPPINSTALL"


EVENT_USER_READY = "ONAPPUSERREADY"


EVENT_UNINSTALL = "ONAPPUNINSTALL"


# The events that hand us a token pair exactly once: journaled before anything else happens.
JOURNALED_EVENTS = frozenset({EVENT_INSTALL, EVENT_USER_READY})


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
    REFUSED = "refused"  # a lower-ranked pair tried to replace an active grant: nothing changed
    REJOURNALED = "rejournaled"  # a late event's pair was renewed and journaled again to be applied
    UNINSTALLED = "uninstalled"
    UNINSTALL_QUEUED = "uninstall_queued"  # unproven: Bitrix24 is asked first, asynchronously


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


def problem_is_final(exc: BaseException) -> bool:
    """True for a refusal that no retry can change (a forged or mismatched claim)."""
    return isinstance(exc, Problem) and exc.kind.value in {"invalid", "forbidden", "upstream_rejected"}
