"""Fixtures of the security suite: hostile listeners. The rig itself is project-wide (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hostile import CatchAll, CraftedOAuthServer


@pytest.fixture
def catch_all() -> Iterator[CatchAll]:
    """A loopback listener nothing may ever reach."""
    listener = CatchAll().start()
    yield listener
    listener.stop()


@pytest.fixture
def crafted_oauth() -> Iterator[CraftedOAuthServer]:
    """An OAuth server answering what the test scripts."""
    server = CraftedOAuthServer().start()
    yield server
    server.stop()
