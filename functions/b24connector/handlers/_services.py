"""The composition root: clients and use cases built once per container, on first use.

Every builder is cached per Settings value, so a warm invocation reuses the same sessions, stores and
caches (decrypted tokens, secrets), and a test that swaps the environment gets fresh ones.

The OAuth client (and with it `requests`) is imported by the builder that needs it, not by this module:
a handler's import stays close to `import boto3`, and a container that never talks to the OAuth server
(token rescues, warm reads with a live token) never loads it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from b24connector.portals import PortalPolicy
from b24connector.settings import Settings
from b24connector.vault import RefreshCoordinator, Vault, open_vault

if TYPE_CHECKING:
    from b24connector.bitrix24.oauth import OAuthClient
    from b24connector.bitrix24.tokens import TokenSet


@cache
def portal_policy(conf: Settings) -> PortalPolicy:
    """The portal allow-list."""
    return PortalPolicy.from_settings(conf)


@cache
def oauth_client(conf: Settings) -> OAuthClient:
    """The Bitrix24 OAuth-server client."""
    # Imported here: loads requests (see the module docstring).
    from b24connector import credentials  # noqa: PLC0415
    from b24connector.bitrix24.oauth import OAuthClient  # noqa: PLC0415
    from b24connector.bitrix24.transport import shared_session  # noqa: PLC0415

    # The secret is fetched per token request through the Powertools cache (SECRET_MAX_AGE_SECONDS).
    return OAuthClient.from_settings(conf, lambda: credentials.client_secret(conf), session=shared_session())


class OnDemandRefresher:
    """The vault's TokenRefresher that builds the OAuth client on the first refresh it is asked for."""

    def __init__(self, conf: Settings) -> None:
        self._conf = conf

    def refresh(self, refresh_token: str, *, server_hint: str | None = None) -> TokenSet:
        """Exchange a refresh token for a new pair (OAuthClient.refresh)."""
        return oauth_client(self._conf).refresh(refresh_token, server_hint=server_hint)


def vault(conf: Settings) -> Vault:
    """The token vault (stores, cipher with its decrypted-token cache, rescue queue)."""
    return open_vault(conf)


@cache
def coordinator(conf: Settings) -> RefreshCoordinator:
    """The refresh coordinator over the vault and the OAuth client (built when a refresh happens)."""
    return open_vault(conf).coordinator(OnDemandRefresher(conf))
