"""The Installer use case: verifies install claims, decides whose grant a portal keeps, authenticates uninstalls."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from b24connector.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    TransientError,
    UnsafeEndpoint,
)
from b24connector.install.jobs import event_job, subscribe_job, uninstall_job
from b24connector.install.model import (
    EVENT_USER_READY,
    Installed,
    InstallEvent,
    InstallGrant,
    InstallStore,
    InstallVerifier,
    Outcome,
    RemovalProbe,
    RoleProbe,
    StoredPortal,
    UninstallNotice,
)
from b24connector.observability import count, logger
from b24connector.portals import InvalidPortal, PortalPolicy
from b24connector.problems import forbidden, unavailable
from b24connector.tokens import TokenSet
from b24connector.vault.errors import GrantRefused, VaultUnavailable
from b24connector.vault.hashing import hash_secret
from b24connector.vault.journal import JobSink
from b24connector.vault.models import ROLE_ADMIN, ROLE_RANK, ROLE_SYSTEM, ROLE_USER

if TYPE_CHECKING:
    # Annotations only: the OAuth client module loads requests, which the handler wires on first use.
    from b24connector.bitrix24.oauth import AppInfo


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
