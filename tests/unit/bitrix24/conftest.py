"""Fixtures of the Bitrix24 protocol unit tests; the fakes themselves live in fakes.py."""

from __future__ import annotations

import socket

import pytest

from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from tests.unit.bitrix24.fakes import FakeTime


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not open sockets: any attempt fails loudly."""

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
