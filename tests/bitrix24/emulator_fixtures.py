"""Our OAuth and REST clients against the Bitrix24 emulator over real loopback HTTP (fixtures; conftest.py imports them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from b24connector.bitrix24.listing import FastLister
from b24connector.bitrix24.oauth import OAuthClient
from b24connector.bitrix24.pacing import LocalTokenBucket
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.rest import RestClient
from b24connector.bitrix24.transport import new_session
from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from bitrix24_emulator import Emulator, EmulatorConfig

REDIRECT_URI = "http://127.0.0.1:9/app/callback"
LEADS = 10_000


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    """One emulator per module with the 10,000 seeded leads of the headline test."""
    with Emulator(EmulatorConfig(leads=LEADS, seed=7, redirect_uri=REDIRECT_URI)) as emulator:
        yield emulator


@pytest.fixture
def fresh(emu: Emulator) -> Emulator:
    """The module's emulator with stats, limits and faults cleared."""
    emu.clear_faults()
    emu.reset()
    return emu


def make_policy(emu: Emulator, *extra_hosts: str) -> PortalPolicy:
    return PortalPolicy(DEFAULT_PORTAL_SUFFIXES, (emu.portal_domain, *extra_hosts), local_mode=True)


@pytest.fixture
def oauth(fresh: Emulator) -> OAuthClient:
    return OAuthClient(
        fresh.client_id,
        lambda: fresh.client_secret,
        [fresh.oauth_url],
        session=new_session(),
        timeout=(2.0, 10.0),
        local_mode=True,
    )


@pytest.fixture
def rest(fresh: Emulator) -> RestClient:
    return RestClient(
        make_policy(fresh), session=new_session(), pacer=LocalTokenBucket(2, 50), timeout=(2.0, 30.0)
    )


@pytest.fixture
def lister(rest: RestClient) -> FastLister:
    return FastLister(rest)


@pytest.fixture
def portal_for(fresh: Emulator) -> Callable[..., PortalContext]:
    """A portal context holding a fresh token chain of the emulator."""

    def make(**kwargs: Any) -> PortalContext:
        tokens = fresh.issue_tokens()
        return PortalContext(tokens["client_endpoint"], tokens["access_token"], **kwargs)

    return make
