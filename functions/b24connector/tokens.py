"""The token pair a portal's grant gives us: a value both the Bitrix24 clients and the vault handle.

It lives outside `bitrix24/` and `vault/` so that neither imports the other for it: `bitrix24.tokens`
parses it from what Bitrix24 sends, `vault/` seals and stores it, `token_refresh/` renews it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TokenSet:
    """An access/refresh token pair with the portal facts that came with it. Secrets hidden from repr."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: int  # Unix time the access token expires
    member_id: str
    client_endpoint: str  # e.g. https://portal.bitrix24.com/rest/
    server_endpoint: str  # e.g. https://oauth.bitrix.info/rest/
    scope: str = ""
    status: str = ""
    user_id: int | None = None
    obtained_at: int = field(default_factory=lambda: int(time.time()))

    def access_expired(self, now: float | None = None, *, skew_seconds: int = 30) -> bool:
        """True when the access token is expired or will be within `skew_seconds`."""
        return (now if now is not None else time.time()) >= self.expires_at - skew_seconds
