"""Vault integration fixtures: the Bitrix24 emulator over HTTP and AWS on moto's or dynalite's server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from b24connector.bitrix24.tokens import parse_token_payload
from b24connector.tokens import TokenSet
from b24connector.vault.portal import Portal
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.emulator import Emulator
from tests.support.aws import AwsStack
from tests.support.vault_rig import Rig

BACKENDS = ["moto", "dynalite"]


@dataclass
class Scene:
    """One installed portal: AWS stack, emulator, a rig to build workers, the initial grant."""

    stack: AwsStack
    emulator: Emulator
    rig: Rig
    grant: TokenSet
    portal: Portal

    @property
    def member_id(self) -> str:
        """The emulated portal's member_id."""
        return self.grant.member_id

    def token_requests(self) -> int:
        """Calls the emulator's token endpoint has served so far."""
        return int(self.emulator.stats()["token_requests"])

    def stored(self) -> Portal:
        """The portal record, strongly consistent."""
        portal = self.rig.worker().store.get(self.member_id, consistent=True)
        assert portal is not None
        return portal


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A Bitrix24 portal + OAuth server on ephemeral loopback ports (single-use rotating tokens)."""
    with Emulator(EmulatorConfig(leads=0)) as running:
        yield running


@pytest.fixture
def scene_factory(aws_stack_factory: Callable[..., AwsStack], emulator: Emulator) -> Callable[..., Scene]:
    """Install the emulator's portal into a fresh stack on `backend`; policy overrides as kwargs."""

    def build(backend: str = "moto", **policy: Any) -> Scene:
        stack = aws_stack_factory(
            dynamodb=backend,
            BITRIX24_CLIENT_ID=emulator.client_id,
            OAUTH_SERVERS=emulator.oauth_url,
            LOCAL_MODE="true",
        )
        rig = Rig.from_env(stack.env(), emulator.client_secret, **policy)
        grant = parse_token_payload(emulator.issue_tokens())
        portal = rig.worker().store.save_grant(grant, domain=emulator.portal_domain, role="admin")
        return Scene(stack, emulator, rig, grant, portal)

    return build
