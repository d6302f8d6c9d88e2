"""What a refresh answer may change about where a portal lives: allow-listed moves, allow-listed servers.

The OAuth server repeats `client_endpoint` and `server_endpoint` in every refresh answer. A renamed cloud
portal moves to another host (its old address answers 302), and the refresh answer may name the new
host before any REST call meets the 302 (docs/bitrix24-facts.md, portal rename: which comes first is
UNVERIFIED, so both orders are handled). So a `client_endpoint` on
another host is handled as a move: adopted only when PortalPolicy allows the new host, and then stored
together with `domain` in the same conditional write, because the REST client refuses an endpoint that
is not on the stored `domain` (a move stored half-way would brick the portal). A refused endpoint is never
stored: the old one stays and the 302 path can still repair it. A `server_endpoint` outside
OAUTH_SERVERS is never stored either (the next refresh would be sent to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from b24connector.portals import InvalidPortal, PortalPolicy

if TYPE_CHECKING:
    from b24connector.settings import Settings

_SERVER_PATHS = ("", "/", "/rest", "/rest/")
# Refusal reasons raised only after the host passed the syntax checks: its name is safe to log.
_LOGGABLE_HOST_REASONS = frozenset({"not_allowed", "port", "bare_suffix", "domain_taken"})


@dataclass(frozen=True, slots=True)
class EndpointChange:
    """What to store of a refresh answer's endpoints; None keeps the stored value."""

    client_endpoint: str | None = None  # canonical REST base, stored only together with `domain`
    domain: str | None = None  # the host of `client_endpoint`
    server_endpoint: str | None = None
    moved_from: str | None = None  # the stored domain, when `domain` is another host
    refused: str | None = None  # why the answer's client_endpoint is not stored (a short reason code)
    refused_host: str | None = None  # the refused host, when it is safe to log
    server_refused: bool = False

    @property
    def moved(self) -> bool:
        """True when this change moves the portal to another host."""
        return self.moved_from is not None and self.domain is not None

    def refuse_move(self, reason: str) -> EndpointChange:
        """The same change without the move: the stored endpoint and domain stay."""
        return EndpointChange(
            server_endpoint=self.server_endpoint,
            refused=reason,
            refused_host=self.domain if reason in _LOGGABLE_HOST_REASONS else None,
            server_refused=self.server_refused,
        )


class EndpointGuard:
    """Judges a refresh answer's endpoints against the portal allow-list and OAUTH_SERVERS."""

    def __init__(self, policy: PortalPolicy, oauth_servers: Sequence[str]) -> None:
        if not oauth_servers:
            raise ValueError("at least one OAuth server is needed")
        bases = [server.strip().lower().rstrip("/") for server in oauth_servers]
        self.policy = policy
        self._servers = frozenset(base + path for base in bases for path in _SERVER_PATHS)

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointGuard:
        """The guard for ALLOWED_PORTAL_SUFFIXES/HOSTS, LOCAL_MODE and OAUTH_SERVERS."""
        return cls(PortalPolicy.from_settings(settings), settings.oauth_servers)

    def __repr__(self) -> str:
        return f"EndpointGuard(policy={self.policy!r}, servers={len(self._servers) // len(_SERVER_PATHS)})"

    def server_allowed(self, server_endpoint: str) -> bool:
        """True when `server_endpoint` names an OAUTH_SERVERS entry (as a base URL or its /rest/)."""
        return server_endpoint.strip().lower() in self._servers

    def judge(self, stored_domain: str | None, client_endpoint: str, server_endpoint: str) -> EndpointChange:
        """What to store of an answer's endpoints for a portal now stored under `stored_domain`.

        Empty answer fields keep the stored values. The caller still has to check that no other active
        portal holds a new domain (refuse_move("domain_taken") when one does).
        """
        server: str | None = None
        server_refused = False
        if server_endpoint:
            if self.server_allowed(server_endpoint):
                server = server_endpoint.strip()
            else:
                server_refused = True
        if not client_endpoint:
            return EndpointChange(server_endpoint=server, server_refused=server_refused)
        try:
            canonical = self.policy.check_client_endpoint(client_endpoint)
        except InvalidPortal as exc:
            host = _host_of(client_endpoint) if exc.reason in _LOGGABLE_HOST_REASONS else None
            return EndpointChange(
                server_endpoint=server, refused=exc.reason, refused_host=host, server_refused=server_refused
            )
        host = _host_of(canonical)
        previous = self._canonical_domain(stored_domain)
        return EndpointChange(
            client_endpoint=canonical,
            domain=host,
            server_endpoint=server,
            moved_from=previous if previous is not None and previous != host else None,
            server_refused=server_refused,
        )

    def _canonical_domain(self, domain: str | None) -> str | None:
        if not domain:
            return None
        try:
            return self.policy.normalize(domain)
        except InvalidPortal:
            # No longer allowed (the allow-list changed): compare as stored; any new host is a move.
            return domain.strip().lower()


def _host_of(url: str) -> str:
    return url.partition("://")[2].partition("/")[0].lower()
