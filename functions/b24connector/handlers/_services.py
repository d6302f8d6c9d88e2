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
from b24connector.token_refresh.coordinator import RefreshCoordinator
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.token_refresh.rescue import SqsRescueQueue
from b24connector.vault import Vault, open_vault
from b24connector.vault.endpoints import EndpointGuard

if TYPE_CHECKING:
    from b24connector.authorization import AuthorizationFlow
    from b24connector.bitrix24.oauth import OAuthClient
    from b24connector.bitrix24.rest import RestClient
    from b24connector.install import Installer
    from b24connector.subscriptions import Subscriber
    from b24connector.tokens import TokenSet


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
    """The coordinator's TokenRefresher that builds the OAuth client on the first refresh it is asked for."""

    def __init__(self, conf: Settings) -> None:
        self._conf = conf

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        """Exchange a refresh token for a new pair (OAuthClient.refresh); `deadline`: end of the lease."""
        return oauth_client(self._conf).refresh(refresh_token, server_hint=server_hint, deadline=deadline)


def vault(conf: Settings) -> Vault:
    """The token vault (stores, cipher with its decrypted-token cache, rescue queue)."""
    return open_vault(conf)


@cache
def coordinator(conf: Settings) -> RefreshCoordinator:
    """The refresh coordinator over the vault, the rescue queue and the OAuth client (built on first refresh)."""
    return RefreshCoordinator(
        open_vault(conf).portals,
        OnDemandRefresher(conf),
        SqsRescueQueue(conf.rescue_queue_url),
        endpoints=EndpointGuard.from_settings(conf),
        policy=RefreshPolicy.from_settings(conf),
    )


@cache
def rest_client(conf: Settings) -> RestClient:
    """A REST client for the lifecycle's few portal calls (user.admin, event.get/bind), paced locally."""
    from b24connector.bitrix24.rest import RestClient  # noqa: PLC0415  (loads requests)
    from b24connector.bitrix24.transport import shared_session  # noqa: PLC0415

    return RestClient.from_settings(conf, session=shared_session())


@cache
def installer(conf: Settings) -> Installer:
    """The lifecycle use case: install page, install events, grants from the OAuth flow, uninstall."""
    from b24connector.install import Installer, RestRoleProbe, StoredGrantRemovalProbe  # noqa: PLC0415

    the_vault = vault(conf)
    oauth = oauth_client(conf)
    return Installer(
        portal_policy(conf),
        oauth,
        the_vault.portals,
        client_id=conf.client_id,
        journal=the_vault.journal,
        roles=RestRoleProbe(rest_client(conf)),
        removal=StoredGrantRemovalProbe(the_vault.portals, oauth, coordinator(conf)),
    )


@cache
def authorization_flow(conf: Settings) -> AuthorizationFlow:
    """The authorization use case (GET /authorize, GET /callback)."""
    from b24connector import credentials, pkce  # noqa: PLC0415
    from b24connector.authorization import AuthorizationFlow  # noqa: PLC0415

    verifier = pkce.verifier_source(lambda: credentials.pkce_key(conf)) if conf.pkce_enabled else None
    return AuthorizationFlow(
        portal_policy(conf),
        vault(conf).states,
        oauth_client(conf),
        installer(conf),
        ttl_seconds=conf.state_ttl_seconds,
        pkce_verifier=verifier,
    )


@cache
def subscriber(conf: Settings) -> Subscriber:
    """The event.bind checker (LifecycleFunction)."""
    from b24connector.leads import VaultPortalOpener  # noqa: PLC0415
    from b24connector.subscriptions import Subscriber  # noqa: PLC0415

    the_vault = vault(conf)
    return Subscriber(
        VaultPortalOpener(the_vault.portals, coordinator(conf)),
        rest_client(conf),
        the_vault.portals,
        events_url=conf.events_url,
        events=conf.bound_events,
    )
