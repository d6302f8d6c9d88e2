"""The OAuth flow in headless Chromium: /authorize -> the portal's consent page -> /callback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from local_stack import LocalStack
from tests.e2e.helpers import (
    admin,
    all_portal_items,
    emulator_stats,
    install_app,
    portal_item,
    reset_emulator_stats,
)

pytestmark = pytest.mark.browser

DEFAULT_STATE_COOKIE = "__Host-b24-oauth"  # settings' default; the template and the local stack keep it


@pytest.fixture
def consent_form(stack: LocalStack) -> Iterator[None]:
    """The real portal redirects a logged-in user at once; these tests drive the emulator's consent form."""
    admin(stack, "POST", "/config", {"consent_form": True})
    yield
    admin(stack, "POST", "/config", {"consent_form": False})


def _cookie_name(stack: LocalStack) -> str:
    """The state cookie's name as the functions see it (STATE_COOKIE_NAME)."""
    env = stack.runtimes["AuthorizeFunction"].spec.environment
    return env.get("STATE_COOKIE_NAME") or DEFAULT_STATE_COOKIE


def _state_cookie(context: Any, name: str) -> dict[str, Any] | None:
    return next((c for c in context.cookies() if c["name"] == name), None)


def _open_consent(stack: LocalStack, page: Any) -> None:
    """Start the sign-in for the emulated portal and land on its consent page."""
    query = urlencode({"domain": stack.portal_domain})
    page.goto(f"{stack.api_url}/authorize?{query}")
    assert page.url.startswith(f"{stack.bitrix24_portal_url}/oauth/authorize/")
    assert page.locator("form").count() == 1


def test_a_logged_in_user_is_redirected_without_a_form(browser_context: Any, stack: LocalStack) -> None:
    # Given an installed portal (the real rest.authorize: no consent form for a logged-in user)
    install_app(stack)
    page = browser_context.new_page()

    # When the user starts the sign-in
    response = page.goto(f"{stack.api_url}/authorize?{urlencode({'domain': stack.portal_domain})}")

    # Then the portal sends the browser straight back to our callback, which connects the portal
    assert response is not None
    assert page.url.startswith(f"{stack.api_url}/callback")
    assert page.locator("h1").inner_text() == "Connected"
    item = portal_item(stack)
    assert item is not None
    assert item["health"] == "active"


@pytest.mark.usefixtures("consent_form")
def test_consent_click_connects_the_portal(
    browser_context: Any, stack: LocalStack, artifacts_dir: Path
) -> None:
    # Given an installed portal and a browser without cookies
    before = install_app(stack)
    reset_emulator_stats(stack)
    page = browser_context.new_page()

    # When the user starts the sign-in, and the portal shows its consent page
    _open_consent(stack, page)
    cookie_name = _cookie_name(stack)
    cookie = _state_cookie(browser_context, cookie_name)
    # (Chromium treats http://127.0.0.1 as potentially trustworthy: it keeps a __Host- Secure cookie)
    assert cookie is not None
    assert cookie["secure"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    # and clicks the form's submit button
    with page.expect_navigation(url=f"{stack.api_url}/callback**") as navigation:
        page.locator("form button[type=submit]").click()
    response = navigation.value

    # Then our callback shows the success page, the grant is stored and the state cookie is gone
    assert response.status == 200
    assert page.locator("h1").inner_text() == "Connected"
    assert f"The Bitrix24 portal {stack.portal_domain} is connected" in page.locator("body").inner_text()
    page.screenshot(path=str(artifacts_dir / "authorize-success.png"), full_page=True)
    after = portal_item(stack)
    assert after is not None
    assert after["version"] >= 1
    assert after["version"] > before["version"]
    assert after["health"] == "active"
    assert emulator_stats(stack)["token_grants"] == {"authorization_code": 1}
    assert _state_cookie(browser_context, cookie_name) is None


def _tamper_state(page: Any, context: Any) -> None:
    page.locator("input[name=state]").evaluate(
        "input => { input.value = input.value.slice(0, -4) + (input.value.endsWith('AAAA') ? 'BBBB' : 'AAAA'); }"
    )


def _remove_cookie(page: Any, context: Any) -> None:
    context.clear_cookies()
    assert context.cookies() == []


# How the sign-in gets spoiled, and the reason code the callback must name.
SPOILED: dict[str, tuple[Callable[[Any, Any], None], str]] = {
    "state-tampered": (_tamper_state, "state_missing"),
    "cookie-removed": (_remove_cookie, "cookie_missing"),
}


@pytest.mark.usefixtures("consent_form")
@pytest.mark.parametrize("case", sorted(SPOILED))
def test_spoiled_callback_shows_the_reason_and_stores_nothing(
    browser_context: Any, stack: LocalStack, artifacts_dir: Path, case: str
) -> None:
    spoil, reason = SPOILED[case]
    # Given an installed portal and the consent page of a fresh sign-in
    install_app(stack)
    page = browser_context.new_page()
    _open_consent(stack, page)
    table_before = all_portal_items(stack)
    reset_emulator_stats(stack)

    # When the sign-in is spoiled before the user approves
    spoil(page, browser_context)
    with page.expect_navigation(url=f"{stack.api_url}/callback**") as navigation:
        page.locator("form button[type=submit]").click()
    response = navigation.value

    # Then the callback answers the error page with its reason code
    assert response.status == 400
    assert response.headers.get("x-reason-code") == reason
    assert page.locator("code").first.inner_text() == reason
    assert "Reason:" in page.locator("body").inner_text()
    page.screenshot(path=str(artifacts_dir / f"authorize-error-{case}.png"), full_page=True)
    # and nothing was exchanged or stored
    assert emulator_stats(stack)["token_requests"] == 0
    assert all_portal_items(stack) == table_before


def test_an_employee_completing_authorize_is_told_an_administrator_must_connect(
    browser_context: Any, stack: LocalStack, artifacts_dir: Path
) -> None:
    # Given a portal connected by its administrator (ONAPPINSTALL of user 1)
    install_app(stack)
    table_before = all_portal_items(stack)
    reset_emulator_stats(stack)
    page = browser_context.new_page()
    # And a browser logged in to the portal as user 2, who is not an administrator
    admin_url = stack.running_info().emulator_admin_url
    page.goto(f"{admin_url}/login?user_id=2")

    # When that employee starts the sign-in: the portal redirects a logged-in user at once
    query = urlencode({"domain": stack.portal_domain})
    with page.expect_navigation(url=f"{stack.api_url}/callback**") as navigation:
        page.goto(f"{stack.api_url}/authorize?{query}")
    response = navigation.value

    # Then the callback says an administrator must connect the portal, and nothing changed
    assert response.status == 403
    assert response.headers.get("x-reason-code") == "administrator_required"
    assert "administrator" in page.locator("body").inner_text()
    page.screenshot(path=str(artifacts_dir / "authorize-employee-refused.png"), full_page=True)
    # The employee's code was exchanged once (that is how their role is learnt), and not stored
    assert emulator_stats(stack)["token_grants"] == {"authorization_code": 1}
    assert all_portal_items(stack) == table_before
