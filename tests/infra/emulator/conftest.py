"""Fixtures for the Bitrix24 emulator tests: a fresh emulator on ephemeral loopback ports per test."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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


@dataclass
class Captured:
    """One request the fake app received."""

    method: str
    path: str
    query: list[tuple[str, str]]
    content_type: str
    form: list[tuple[str, str]]


@dataclass
class FakeApp:
    """A tiny app server recording what the portal sends."""

    url: str
    received: list[Captured] = field(default_factory=list)
    # What the app answers (e.g. 500 to show the portal never retries).
    answer_status: int = 200

    def forms(self, event: str) -> list[dict[str, str]]:
        """The form of every received POST whose `event` field is `event`."""
        return [dict(c.form) for c in self.received if dict(c.form).get("event") == event]


@pytest.fixture
def app() -> Iterator[FakeApp]:
    """A fake app server on a loopback port; `url` ends in /install."""
    received: list[Captured] = []
    fake = FakeApp("", received)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            parts = urlsplit(self.path)
            received.append(
                Captured(
                    "POST",
                    parts.path,
                    parse_qsl(parts.query, keep_blank_values=True),
                    self.headers.get("Content-Type", ""),
                    parse_qsl(body, keep_blank_values=True),
                )
            )
            payload = json.dumps({"status": "success"}).encode()
            self.send_response(fake.answer_status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/install"
    yield fake
    server.shutdown()
    server.server_close()
