"""Token vault: portal records (DynamoDB via PynamoDB), KMS token ciphertext, versioned commits.

The refresh use case that drives the commits lives in b24connector.token_refresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from b24connector.settings import Settings, get_settings
from b24connector.vault.cipher import TokenCipher
from b24connector.vault.errors import (
    GrantNeedsReauth,
    GrantRefused,
    NotEnoughTime,
    PortalNotStored,
    RefreshDeferred,
    RefreshRejected,
    RefreshThrottled,
    RefreshTimeout,
    RefreshUnavailable,
    RefreshUnsettled,
    StateRefusal,
    StateRefused,
    TokenDecryptError,
    TokenRescueFailed,
    VaultError,
    VaultUnavailable,
)
from b24connector.vault.journal import JournalCodec, LifecycleJob, SqsLifecycleQueue
from b24connector.vault.models import aws_region, bind_portal_model, bind_state_model
from b24connector.vault.portal import Portal
from b24connector.vault.states import ConsumedState, StateStore
from b24connector.vault.store import PortalStore

__all__ = [
    "ConsumedState",
    "GrantNeedsReauth",
    "GrantRefused",
    "LifecycleJob",
    "NotEnoughTime",
    "Portal",
    "PortalNotStored",
    "PortalStore",
    "RefreshDeferred",
    "RefreshRejected",
    "RefreshThrottled",
    "RefreshTimeout",
    "RefreshUnavailable",
    "RefreshUnsettled",
    "StateRefusal",
    "StateRefused",
    "StateStore",
    "TokenCipher",
    "TokenDecryptError",
    "TokenRescueFailed",
    "Vault",
    "VaultError",
    "VaultUnavailable",
    "open_vault",
]


@dataclass(frozen=True, slots=True)
class Vault:
    """The vault's parts wired from settings: one set per container (see open_vault)."""

    settings: Settings
    cipher: TokenCipher
    portals: PortalStore
    states: StateStore
    journal: SqsLifecycleQueue

    @classmethod
    def from_settings(cls, settings: Settings, *, region: str | None = None) -> Vault:
        """Build every part from settings; table models bind to the configured names and region."""
        where = region or aws_region()
        cipher = TokenCipher(settings.token_key_id)
        return cls(
            settings=settings,
            cipher=cipher,
            portals=PortalStore(
                bind_portal_model(settings.portals_table, where),
                cipher,
                refresh_after_days=settings.refresh_after_days,
                due_index_shards=settings.due_index_shards,
            ),
            states=StateStore(
                bind_state_model(settings.states_table, where), ttl_seconds=settings.state_ttl_seconds
            ),
            journal=SqsLifecycleQueue(settings.lifecycle_queue_url, JournalCodec(cipher)),
        )


@cache
def _vault_for(settings: Settings) -> Vault:
    return Vault.from_settings(settings)


def open_vault(settings: Settings | None = None) -> Vault:
    """The container-wide vault (cached per settings, so the decrypted-token cache survives warm calls)."""
    return _vault_for(settings or get_settings())
