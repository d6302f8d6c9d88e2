"""What a refresh answer's endpoints may change: a portal rename, or the OAuth server to use next.

A refresh answer (or a rescued one) may name a new `client_endpoint` before any REST call meets the
rename's 302 (docs/bitrix24-facts.md#f-host-3); vault.endpoints.EndpointGuard judges the hosts, and
this module adds the one rule it cannot check alone: a portal must not take over another tenant's domain.
"""

from __future__ import annotations

from dataclasses import replace

from b24connector.observability import count, logger
from b24connector.tokens import TokenSet
from b24connector.vault.cipher import TokenMetadata
from b24connector.vault.endpoints import EndpointChange, EndpointGuard
from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.portal import Portal
from b24connector.vault.store import PortalStore


def judge_endpoints(
    store: PortalStore, guard: EndpointGuard, portal: Portal, client_endpoint: str, server_endpoint: str
) -> EndpointChange:
    """What of the answer's endpoints may be stored for `portal` (see vault.endpoints)."""
    change = guard.judge(portal.domain, client_endpoint, server_endpoint)
    if not change.moved or change.domain is None:
        return change
    try:
        holder = store.get_by_domain(change.domain)
    except VaultUnavailable:
        # The tokens matter more than the move: keep the old address; a REST call meeting the 302
        # (or the next refresh) moves the portal later.
        return change.refuse_move("lookup_failed")
    if holder is not None and holder.member_id != portal.member_id and holder.is_active:
        # A portal must not take over another tenant's domain lookups (as for a followed 302).
        return change.refuse_move("domain_taken")
    return change


def judged_metadata(meta: TokenMetadata, change: EndpointChange) -> TokenMetadata:
    """`meta` with only the endpoints `change` allows; "" keeps the stored ones."""
    return replace(
        meta, client_endpoint=change.client_endpoint or "", server_endpoint=change.server_endpoint or ""
    )


def report_endpoints(member_id: str, change: EndpointChange, *, path: str) -> None:
    """Log and count what a committed refresh did to the portal's address (never a token)."""
    if change.moved:
        logger.info(
            "portal renamed",
            extra={
                "member_id": member_id,
                "domain": change.domain,
                "previous_domain": change.moved_from,
                "path": path,
            },
        )
        count("PortalMoved")
    if change.refused is not None:
        logger.warning(
            "portal rename refused",
            extra={
                "member_id": member_id,
                "reason": change.refused,
                "refused_domain": change.refused_host,
                "path": path,
            },
        )
        count("PortalMoveRefused")
    if change.server_refused:
        logger.warning(
            "OAuth server endpoint refused: not in OAUTH_SERVERS",
            extra={"member_id": member_id, "path": path},
        )
        count("ServerEndpointRefused")


def as_stored(tokens: TokenSet, portal: Portal) -> TokenSet:
    """`tokens` with the endpoints the committed record holds (what a later read of it would give)."""
    return replace(
        tokens,
        client_endpoint=portal.client_endpoint or "",
        server_endpoint=portal.server_endpoint or "",
    )
