"""The composition root: clients and use cases built once per container, on first use.

Every builder is cached per Settings value, so a warm invocation reuses the same sessions, stores and
caches (decrypted tokens, secrets), and a test that swaps the environment gets fresh ones.
"""

from __future__ import annotations

from functools import cache

from b24connector import credentials
from b24connector.bitrix24.oauth import OAuthClient
from b24connector.bitrix24.transport import shared_session
from b24connector.portals import PortalPolicy
from b24connector.settings import Settings
from b24connector.vault import RefreshCoordinator, Vault, open_vault


@cache
def portal_policy(conf: Settings) -> PortalPolicy:
    """The portal allow-list."""
    return PortalPolicy.from_settings(conf)


@cache
def oauth_client(conf: Settings) -> OAuthClient:
    """The Bitrix24 OAuth-server client."""
    # The secret is fetched per token request through the Powertools cache (SECRET_MAX_AGE_SECONDS).
    return OAuthClient.from_settings(conf, lambda: credentials.client_secret(conf), session=shared_session())


def vault(conf: Settings) -> Vault:
    """The token vault (stores, cipher with its decrypted-token cache, rescue queue)."""
    return open_vault(conf)


@cache
def coordinator(conf: Settings) -> RefreshCoordinator:
    """The refresh coordinator over the vault and the OAuth client."""
    return open_vault(conf).coordinator(oauth_client(conf))
