"""In-memory Bitrix24 OAuth server for unit tests, faithful to fact sheet 2.4-2.6.

- Every refresh returns a new pair; the used refresh token is spent (a second use is invalid_grant).
- The access token issued with a spent refresh token dies too (the strict reading of 2.6).
- Each grant (install, callback) starts an independent chain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from b24connector.bitrix24.errors import InvalidGrant
from b24connector.tokens import TokenSet
from tests.leak_canary import canary_value


def _token(kind: str) -> str:
    # Canary-marked, so the leak canary also catches a leak of a token this fake minted.
    return canary_value(kind)


@dataclass
class _Chain:
    member_id: str
    domain: str
    refresh_token: str
    access_token: str


class FactSheetOAuthServer:
    """A TokenRefresher with single-use rotating refresh tokens; counts token-endpoint calls."""

    def __init__(self, *, clock: Callable[[], float] = time.time, access_lifetime: int = 3600) -> None:
        self._clock = clock
        self._lifetime = access_lifetime
        self._lock = threading.Lock()
        self._chains: dict[str, _Chain] = {}  # by current refresh token
        self._live_access: set[str] = set()
        self.token_requests = 0
        self.deadlines: list[float | None] = []  # the deadline each refresh was given (monotonic)
        # Raised (once each, in order) by the next refresh calls before they touch any chain.
        self.fail_next: list[Exception] = []
        # Raised by the next refresh calls *after* the chain rotated (the token is spent either way).
        self.fail_after_rotation: list[Exception] = []

    def _issue(self, chain: _Chain) -> TokenSet:
        now = int(self._clock())
        return TokenSet(
            access_token=chain.access_token,
            refresh_token=chain.refresh_token,
            expires_at=now + self._lifetime,
            member_id=chain.member_id,
            client_endpoint=f"https://{chain.domain}/rest/",
            server_endpoint="https://oauth.bitrix.info/rest/",
            scope="crm,user",
            status="L",
            user_id=1,
            obtained_at=now,
        )

    def grant(self, member_id: str, domain: str = "portal.bitrix24.com") -> TokenSet:
        """A fresh chain, as an install or code exchange hands it over."""
        with self._lock:
            chain = _Chain(
                member_id=member_id,
                domain=domain,
                refresh_token=_token("refresh"),
                access_token=_token("access"),
            )
            self._chains[chain.refresh_token] = chain
            self._live_access.add(chain.access_token)
            return self._issue(chain)

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        """grant_type=refresh_token: rotate the chain or answer invalid_grant."""
        self.deadlines.append(deadline)
        with self._lock:
            self.token_requests += 1
            if self.fail_next:
                raise self.fail_next.pop(0)
            chain = self._chains.pop(refresh_token, None)
            if chain is None:
                raise InvalidGrant(
                    "invalid_grant", "refresh token is invalid or already used", http_status=400
                )
            self._live_access.discard(chain.access_token)
            chain.refresh_token, chain.access_token = _token("refresh"), _token("access")
            self._chains[chain.refresh_token] = chain
            self._live_access.add(chain.access_token)
            issued = self._issue(chain)
            if self.fail_after_rotation:
                raise self.fail_after_rotation.pop(0)
            return issued

    def access_valid(self, access_token: str) -> bool:
        """True when a REST call with this access token would be accepted."""
        with self._lock:
            return access_token in self._live_access

    def revoke_all(self, member_id: str) -> None:
        """The app was removed: every chain of the portal dies."""
        with self._lock:
            for token, chain in list(self._chains.items()):
                if chain.member_id == member_id:
                    del self._chains[token]
                    self._live_access.discard(chain.access_token)
