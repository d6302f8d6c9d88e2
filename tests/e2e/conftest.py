"""Fixtures of the end-to-end tests: one local stack for the session, headless Chromium per test.

- `stack` (session): the whole template on ephemeral loopback ports with the Bitrix24 emulator. The
  install page's BX24 script (INSTALL_FINISH_SCRIPT_URL) points at the emulator's stand-in. The
  functions' log lines go to tests/e2e/artifacts/functions.log.
- `chromium_path` (session): Debian's chromium (CHROMIUM_PATH, else `chromium` on PATH). Missing, the
  browser tests fail when CI is set and are skipped otherwise.
- `browser_context` (function): a Playwright persistent context in a fresh user-data dir.
- `artifacts_dir`: tests/e2e/artifacts/ (gitignored) for screenshots.
Helpers (reset_emulator_stats, portal_item, all_portal_items, install_app, ...) live in helpers.py.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_stack import LocalStack, PortInUseError, StackConfig
from local_stack.config import HOST
from tests.e2e.helpers import CHROMIUM_MISSING, chromium_missing_means_failure, find_chromium

ARTIFACTS = Path(__file__).parent / "artifacts"
E2E_LEADS = 2_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_TIMEOUT_MS = 15_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class _StderrTo:
    """Points fd 2 at a file while the stack starts, so its child processes log there, not into pytest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved = -1

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stderr.flush()
        self._saved = os.dup(2)
        with self.path.open("w", encoding="utf-8") as sink:
            os.dup2(sink.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where screenshots and the functions' log go (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def stack(artifacts_dir: Path) -> Iterator[LocalStack]:
    """The local stack, started once for the e2e session and stopped at its end."""
    last_error: Exception | None = None
    for _attempt in range(3):
        # The emulator's port must be known before the functions' environment is built, so the
        # install page can load the emulator's BX24 stand-in; a rare race for the port is retried.
        portal_port = _free_port()
        config = StackConfig(
            leads=E2E_LEADS,
            portal_port=portal_port,
            prewarm=True,  # workers are spawned now and inherit the log file as their stderr
            env_overrides={"INSTALL_FINISH_SCRIPT_URL": f"http://{HOST}:{portal_port}/_emulator/bx24.js"},
        )
        running = LocalStack(config)
        try:
            with _StderrTo(artifacts_dir / "functions.log"):
                running.start()
        except PortInUseError as exc:
            last_error = exc
            continue
        try:
            yield running
        finally:
            running.stop()
        return
    raise RuntimeError(f"the local stack did not start: {last_error}")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; fails in CI (CI set) and skips locally when it is missing."""
    found = find_chromium(os.environ)
    if found is not None:
        return found
    if chromium_missing_means_failure(os.environ):
        pytest.fail(CHROMIUM_MISSING)
    pytest.skip(CHROMIUM_MISSING)


@pytest.fixture(scope="session")
def playwright_driver(chromium_path: str) -> Iterator[Any]:
    """Playwright's driver for the session (the browser itself is Debian's, never downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser_context(playwright_driver: Any, chromium_path: str, tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium in a fresh user-data dir (no cookies, no cache), closed after the test."""
    context = playwright_driver.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=chromium_path,
        headless=True,
        args=CHROMIUM_ARGS,
    )
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()
