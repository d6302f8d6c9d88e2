"""Vault unit fixtures: in-process moto (no sockets), tables from template.yaml, fake clock and OAuth."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from moto import mock_aws

from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_OAUTH_SERVERS, DEFAULT_PORTAL_SUFFIXES
from b24connector.token_refresh.coordinator import RefreshCoordinator
from b24connector.token_refresh.lease_holder import TokenRefresher
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.tokens import TokenSet
from b24connector.vault.cipher import TokenCipher
from b24connector.vault.endpoints import EndpointGuard
from b24connector.vault.models import bind_portal_model, bind_state_model
from b24connector.vault.portal import Portal
from b24connector.vault.states import StateStore
from b24connector.vault.store import PortalStore
from tests.support.aws import AwsStack, provision
from tests.support.fake_oauth import FactSheetOAuthServer
from tests.support.vault_fakes import FakeClock, RecordingRescueSink


@dataclass
class UnitVault:
    """Every vault part over one in-process moto stack, sharing one fake clock."""

    stack: AwsStack
    clock: FakeClock
    cipher: TokenCipher
    portals: PortalStore
    states: StateStore
    oauth: FactSheetOAuthServer
    rescue: RecordingRescueSink
    endpoints: EndpointGuard = field(
        default_factory=lambda: EndpointGuard(PortalPolicy(DEFAULT_PORTAL_SUFFIXES), DEFAULT_OAUTH_SERVERS)
    )

    def coordinator(
        self,
        *,
        sleep: Callable[[float], None] | None = None,
        refresher: TokenRefresher | None = None,
        **policy: Any,
    ) -> RefreshCoordinator:
        """A coordinator with a fake sleep (advancing the clock, unless `sleep` is given) and no jitter."""
        return RefreshCoordinator(
            self.portals,
            refresher or self.oauth,
            self.rescue,
            endpoints=self.endpoints,
            policy=RefreshPolicy(**policy),
            clock=self.clock,
            sleep=sleep or self.clock.sleep,
            jitter=lambda: 1.0,
        )

    def install(self, member_id: str = "member-a", domain: str = "a.bitrix24.com") -> tuple[Portal, TokenSet]:
        """A portal installed with a fresh chain from the fake OAuth server."""
        grant = self.oauth.grant(member_id, domain)
        return self.portals.save_grant(
            grant, domain=domain, role="admin", application_token="app-token-" + member_id
        ), grant


@pytest.fixture(scope="module")
def _in_process_moto() -> Iterator[None]:
    # One mock per module: starting moto's mock costs far more than a test's own tables.
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
        yield


@pytest.fixture
def mocked_aws(_in_process_moto: None) -> AwsStack:
    """In-process moto with a fresh stack (tables from template.yaml, key, secrets, queues)."""
    return provision(None)


@pytest.fixture
def vault(mocked_aws: AwsStack) -> UnitVault:
    """The vault's parts on in-process moto, clock at a fixed instant."""
    clock = FakeClock()
    cipher = TokenCipher(mocked_aws.token_key_id, kms_client=mocked_aws.client("kms"))
    return UnitVault(
        stack=mocked_aws,
        clock=clock,
        cipher=cipher,
        portals=PortalStore(
            bind_portal_model(mocked_aws.portals_table, mocked_aws.region),
            cipher,
            refresh_after_days=21,
            due_index_shards=4,
            clock=clock,
        ),
        states=StateStore(
            bind_state_model(mocked_aws.states_table, mocked_aws.region), ttl_seconds=600, clock=clock
        ),
        oauth=FactSheetOAuthServer(clock=clock),
        rescue=RecordingRescueSink(),
    )
