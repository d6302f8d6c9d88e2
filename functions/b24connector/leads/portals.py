"""Portal access for a read: find the portal, hand the REST client its tokens, renew and follow renames."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from b24connector.bitrix24.errors import PortalMoved
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.observability import count, logger
from b24connector.token_refresh.coordinator import RefreshCoordinator
from b24connector.vault.errors import GrantNeedsReauth, PortalNotStored, VaultError
from b24connector.vault.portal import Portal
from b24connector.vault.store import PortalStore


@dataclass(frozen=True, slots=True)
class OpenPortal:
    """A portal ready for REST calls: its tenant key and the REST client's portal context."""

    member_id: str
    context: Any


class PortalOpener(Protocol):
    """Finds an active portal by member_id or domain and prepares it for REST calls."""

    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
        """Raise the vault's PortalNotStored / GrantNeedsReauth / TokenDecryptError when it cannot be used."""
        ...


class VaultPortalOpener:
    """PortalOpener over the vault: one DynamoDB read, tokens from the per-version cache when warm.

    A portal rename (docs/bitrix24-facts.md F-HOST-1: 302 from the old address) that the REST client
    followed, which it does only to a host PortalPolicy allows, is stored once per read through
    `record_move`: the next read goes straight to the new address, and the new domain finds the
    portal. A new address that another active portal already holds is refused (the read fails,
    nothing is stored): a portal must not be able to take over another tenant's domain lookups.
    """

    def __init__(
        self,
        store: PortalStore,
        coordinator: RefreshCoordinator,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._monotonic = monotonic

    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
        """The portal's REST context, whose renew hook refreshes through the coordinator."""
        portal = self._active_portal(member_id, domain)
        tokens = self._store.tokens(portal)
        portal_id = portal.member_id

        def remaining_ms() -> int:
            return 60_000 if deadline is None else int((deadline - self._monotonic()) * 1000)

        def renew(rejected_access_token: str) -> str:
            fresh = self._coordinator.fresh_access_token(
                portal_id, rejected_access_token, remaining_ms=remaining_ms
            )
            return fresh.access_token

        def reload(rejected_access_token: str) -> str | None:
            newer = self._coordinator.stored_if_newer(
                portal_id, rejected_access_token, remaining_ms=remaining_ms
            )
            return None if newer is None else newer.access_token

        def moved(domain: str, client_endpoint: str) -> None:
            self._record_move(portal_id, domain, client_endpoint)

        access_token = tokens.access_token
        if tokens.access_expired():
            # Known to be dead: renew now instead of spending a portal request on expired_token.
            access_token = renew(access_token)
        context = PortalContext(
            portal.client_endpoint or "",
            access_token,
            renew=renew,
            reload=reload,
            deadline=deadline,
            on_moved=moved,
            domain=portal.domain,
            pacing_key=portal_id,
        )
        return OpenPortal(portal_id, context)

    def _active_portal(self, member_id: str | None, domain: str | None) -> Portal:
        """The portal by member_id or domain; PortalNotStored, or GrantNeedsReauth when it cannot be used."""
        if member_id is not None:
            portal = self._store.get(member_id)
        elif domain is not None:
            portal = self._store.get_by_domain(domain)
        else:
            raise ValueError("a member_id or a domain is required")
        if portal is None:
            raise PortalNotStored("no portal with that key")
        if not portal.is_active or not portal.client_endpoint:
            raise GrantNeedsReauth(portal.member_id, portal.health)
        return portal

    def _record_move(self, member_id: str, domain: str, client_endpoint: str) -> None:
        """Store a followed rename; raise PortalMoved when another active portal holds that address."""
        try:
            holder = self._store.get_by_domain(domain)
            if holder is not None and holder.member_id != member_id and holder.is_active:
                logger.warning("portal rename refused", extra={"member_id": member_id, "domain": domain})
                count("PortalMoveRefused")
                raise PortalMoved(
                    "PORTAL_MOVED", "the new portal address belongs to another portal", http_status=302
                )
            moved = self._store.record_move(member_id, domain=domain, client_endpoint=client_endpoint)
        except VaultError as exc:
            # The read can go on at the new address; the next one meets the 302 and tries again.
            logger.warning(
                "portal rename not stored", extra={"member_id": member_id, "error": type(exc).__name__}
            )
            return
        if moved is None:
            logger.info("portal rename not stored: portal inactive", extra={"member_id": member_id})
            return
        logger.info("portal renamed", extra={"member_id": member_id, "domain": domain})
        count("PortalMoved")
