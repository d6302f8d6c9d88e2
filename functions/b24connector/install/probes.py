"""Adapters the Installer asks: the role probe (REST user.admin) and the uninstall confirmation through the stored grant."""

from __future__ import annotations

from typing import Any

from b24connector.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    InvalidClient,
    InvalidToken,
    NotInstalled,
    OAuthError,
    TransientError,
)
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.install.model import InstallVerifier
from b24connector.vault.errors import GrantNeedsReauth, VaultError

# What the OAuth server says when the app is gone from the portal (docs/bitrix24-facts.md#f-oauth-9).
_REMOVED_CODES = frozenset({"NOT_INSTALLED", "ERROR_OAUTH", "APPLICATION_NOT_FOUND"})


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
        except GrantNeedsReauth as dead:
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
