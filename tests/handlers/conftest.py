"""Fixtures of the handler flow tests: the project's rig (tests/support/rig.py) set up for journeys over
the loopback API: the emulator's portal redirects consent to the API's own /callback, runs its standard
rate plan and serves the bx24.js the install page loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bitrix24_emulator import Emulator
from tests.support.rig import Rig


@pytest.fixture
def emulator_config() -> dict[str, Any]:
    """EmulatorConfig overrides for this test (parametrize the fixture to change them)."""
    return {"leads": 300, "seed": 7}


@pytest.fixture
def rig(
    rig_factory: Callable[..., Rig], emulator_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Rig:
    """One portal on moto, reached over the loopback API."""
    from b24connector.settings import get_settings

    rig = rig_factory(emulator={"rate_plan": "standard", **emulator_config}, HTTP_TIMEOUT_SECONDS="5")
    rig.emulator.configure(redirect_uri=f"{rig.api_url}/callback")
    rig.env["INSTALL_FINISH_SCRIPT_URL"] = f"{rig.emulator.portal_url}/bx24.js"
    monkeypatch.setenv("INSTALL_FINISH_SCRIPT_URL", rig.env["INSTALL_FINISH_SCRIPT_URL"])
    get_settings.cache_clear()
    return rig


@pytest.fixture
def emulator(rig: Rig) -> Emulator:
    """The rig's portal."""
    return rig.emulator
