"""The install page inside the portal's frame, in headless Chromium, calling BX24.installFinish() once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from local_stack import LocalStack
from tests.e2e.helpers import admin, portal_item

pytestmark = pytest.mark.browser

# Counts what reaches the framing portal page: BX24.installFinish() tells its parent window by
# postMessage, which is how the real library reports to the portal.
COUNT_INSTALL_FINISH = """
window.__installFinishMessages = 0;
window.addEventListener("message", (event) => {
  if (event.data && event.data.bx24 === "installFinish") { window.__installFinishMessages += 1; }
});
"""
SETTLE_SECONDS = 1.0  # time for a second, unwanted installFinish() to show up


def _frame_url(stack: LocalStack) -> str:
    return f"{stack.emulator_admin_url}/frame?url={quote(f'{stack.api_url}/install', safe='')}"


def _install_in_frame(browser_context: Any, stack: LocalStack, artifacts_dir: Path) -> tuple[Any, Any]:
    """Open the portal page that POSTs the install form into an iframe; wait for installFinish()."""
    page = browser_context.new_page()
    page.add_init_script(COUNT_INSTALL_FINISH)
    page.goto(_frame_url(stack))
    page.wait_for_function("document.getElementById('install-status').textContent === 'finished'")
    time.sleep(SETTLE_SECONDS)
    frame = page.frame(name="app-frame")
    assert frame is not None
    page.screenshot(path=str(artifacts_dir / "install-frame.png"), full_page=True)
    return page, frame


def test_framed_install_page_calls_install_finish_once(
    browser_context: Any, stack: LocalStack, artifacts_dir: Path
) -> None:
    # Given the portal framing our install URL with the install POST, as Bitrix24 does
    before = portal_item(stack)
    script_url = stack.runtimes["InstallFunction"].spec.environment["INSTALL_FINISH_SCRIPT_URL"]
    assert script_url == f"{stack.emulator_admin_url}/bx24.js"
    # (the emulator counts installFinish() calls over its whole life)
    calls_before = admin(stack, "GET", "/install-finish-calls")["install_finish_calls"]

    # When the page loads in the frame
    page, frame = _install_in_frame(browser_context, stack, artifacts_dir)

    # Then our install page loaded the portal's BX24 script and called installFinish() exactly once:
    # the portal page got one message, and the emulator recorded one call and counts the app installed
    assert frame.url.startswith(f"{stack.api_url}/install?")
    assert frame.locator("h1").inner_text() == "Installing"
    assert frame.locator("script[src]").get_attribute("src") == script_url
    assert page.evaluate("window.__installFinishMessages") == 1
    calls = admin(stack, "GET", "/install-finish-calls")
    assert calls == {"install_finish_calls": calls_before + 1, "installed": True}
    # and the install page's tokens were stored as a new version
    after = portal_item(stack)
    assert after is not None
    assert after["health"] == "active"
    assert after["version"] > (before["version"] if before else 0)
