"""Fixtures of the Bitrix24 adapter's tests: fakes for the unit tests, the emulator for the integration ones.

The fakes live in fakes.py; the emulator-backed clients in emulator_fixtures.py.
"""

from __future__ import annotations

import socket

import pytest

from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from tests.bitrix24.emulator_fixtures import emu, fresh, lister, oauth, portal_for, rest  # noqa: F401
from tests.bitrix24.fakes import FakeTime


@pytest.fixture(autouse=True)
def _no_sockets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not open sockets: any attempt fails loudly (integration tests are marked)."""
    if request.node.get_closest_marker("integration"):
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("unit tests must not open sockets")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def policy() -> PortalPolicy:
    return PortalPolicy(DEFAULT_PORTAL_SUFFIXES)
