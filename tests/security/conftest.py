"""Fixtures of the security suite: rigs on moto or dynalite, hostile listeners."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bitrix24_emulator import Emulator, EmulatorConfig
from tests.security.harness import CLIENT_ID, CLIENT_SECRET, ApiFront, CatchAll, CraftedOAuthServer, Rig
from tests.support.aws import provision
from tests.support.servers import MotoServer

BACKENDS = ("moto", "dynalite")


def _emulator(**overrides: Any) -> Emulator:
    settings: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": "https://api.test/callback",
        "leads": 120,
        "seed": 11,
        "rate_plan": "off",
        **overrides,
    }
    return Emulator(EmulatorConfig(**settings)).start()


@pytest.fixture
def rig_factory(
    request: pytest.FixtureRequest, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Rig]]:
    """Build a rig: `backend` moto|dynalite, `portals` emulated portals (all allow-listed), env overrides."""
    from b24connector.settings import get_settings

    started: list[Emulator] = []
    fronts: list[ApiFront] = []

    def build(
        *,
        backend: str = "moto",
        portals: int = 1,
        extra_oauth_servers: tuple[str, ...] = (),
        emulator: dict[str, Any] | None = None,
        **env: str,
    ) -> Rig:
        dynamodb_url = None
        if backend == "dynalite":
            dynamodb_url = request.getfixturevalue("dynalite_server").endpoint_url
        elif backend != "moto":
            raise ValueError(backend)
        stack = provision(
            moto_server.endpoint_url, dynamodb_endpoint_url=dynamodb_url, client_secret=CLIENT_SECRET
        )
        emulators = [_emulator(**dict(emulator or {})) for _ in range(portals)]
        started.extend(emulators)
        front = ApiFront().start()
        fronts.append(front)
        full_env = {
            **stack.env(),
            "LOCAL_MODE": "true",
            "ALLOWED_PORTAL_HOSTS": ",".join(e.portal_domain for e in emulators),
            "OAUTH_SERVERS": ",".join([*(e.oauth_url for e in emulators), *extra_oauth_servers]),
            "HTTP_TIMEOUT_SECONDS": "10",  # production default: a loaded CI machine must not time out
            "EVENTS_URL": f"{front.url}/events",
            **env,
        }
        monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
        for name, value in full_env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return Rig(stack, emulators[0], full_env, backend, emulators[1:], front.url)

    yield build
    for emulator in started:
        emulator.stop()
    for front in fronts:
        front.stop()
    get_settings.cache_clear()


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    """One emulated portal on moto."""
    return rig_factory()


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
