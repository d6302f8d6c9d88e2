"""Fixtures for the Bitrix24 emulator tests: a fresh emulator on ephemeral loopback ports per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bitrix24_emulator import Emulator, EmulatorConfig

REDIRECT_URI = "http://127.0.0.1:9/app/callback"


@pytest.fixture
def emu_factory() -> Iterator[Callable[..., Emulator]]:
    """Start emulators with config overrides; all are stopped after the test."""
    started: list[Emulator] = []

    def make(**overrides: Any) -> Emulator:
        settings: dict[str, Any] = {"leads": 300, "seed": 3, "redirect_uri": REDIRECT_URI}
        settings.update(overrides)
        emulator = Emulator(EmulatorConfig(**settings)).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emu(emu_factory: Callable[..., Emulator]) -> Emulator:
    """A running emulator with 300 leads."""
    return emu_factory()


@pytest.fixture
def token(emu: Emulator) -> str:
    """A live access token of a fresh chain."""
    return str(emu.issue_tokens()["access_token"])
