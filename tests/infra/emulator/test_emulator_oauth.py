"""Consent page, code exchange, refresh rotation and the OAuth server's app.info (fact sheet sections 1-2)."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from bitrix24_emulator import Emulator
from tests.infra.emulator.conftest import REDIRECT_URI
from tests.infra.emulator.helpers import call, token_request

# Fact sheet section 2.4, field for field.
TOKEN_FIELDS = {
    "access_token",
    "client_endpoint",
    "domain",
    "expires",
    "expires_in",
    "member_id",
    "refresh_token",
    "scope",
    "server_endpoint",
    "status",
    "user_id",
}


def _consent(emu: Emulator, state: str = "xyz") -> dict[str, str]:
    """GET the authorize page as a logged-in user: an immediate 302 (rest.authorize); the redirect's query."""
    answer = requests.get(
        emu.authorize_url,
        params={"client_id": emu.client_id, "state": state},
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 302
    assert "<form" not in answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _consent_form(emu: Emulator, state: str = "xyz") -> dict[str, str]:
    """With consent_form on: GET the page, submit its one form, return the redirect's query."""
    page = requests.get(emu.authorize_url, params={"client_id": emu.client_id, "state": state}, timeout=5)
    assert page.status_code == 200
    forms = re.findall(r"<form\b[^>]*>", page.text)
    assert len(forms) == 1
    assert 'method="post"' in forms[0]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    action = re.search(r'action="([^"]+)"', forms[0])
    assert action is not None
    answer = requests.post(
        f"{emu.portal_url}{action.group(1)}", data=fields, allow_redirects=False, timeout=5
    )
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_consent_redirects_with_the_documented_parameters(emu: Emulator) -> None:
    # When a logged-in user opens the authorize page (no consent form on the real portal)
    query = _consent(emu, state="s-123")

    # Then the redirect carries exactly code, state, domain, member_id, scope, server_domain
    assert set(query) == {"code", "state", "domain", "member_id", "scope", "server_domain"}
    assert query["state"] == "s-123"
    assert query["domain"] == emu.portal_domain
    assert query["member_id"] == emu.member_id
    assert query["scope"] == "crm,user"
    assert query["server_domain"] == emu.oauth_domain
    assert re.fullmatch(r"[a-z0-9]{32}", query["code"])


def test_consent_form_setting_restores_the_one_form_page(emu: Emulator) -> None:
    emu.configure(consent_form=True)
    query = _consent_form(emu, state="s-9")
    assert query["state"] == "s-9"
    assert re.fullmatch(r"[a-z0-9]{32}", query["code"])


def test_unknown_client_id_gets_an_error_page_without_redirect(emu: Emulator) -> None:
    for method in ("GET", "POST"):
        answer = requests.request(
            method,
            emu.authorize_url,
            params={"client_id": "local.nope.nope", "state": "s"},
            allow_redirects=False,
            timeout=5,
        )
        assert answer.status_code == 400
        assert "Location" not in answer.headers
        assert "<form" not in answer.text
        assert "not found" in answer.text


def test_code_exchange_answers_the_token_response_shape(emu: Emulator) -> None:
    # Given a fresh code
    code = _consent(emu)["code"]

    # When it is exchanged (GET with query parameters, as the docs show)
    answer = requests.get(
        emu.token_url,
        params={
            "grant_type": "authorization_code",
            "client_id": emu.client_id,
            "client_secret": emu.client_secret,
            "code": code,
        },
        timeout=5,
    )

    # Then the JSON has exactly the documented fields and values
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == TOKEN_FIELDS
    assert body["client_endpoint"] == f"{emu.portal_url}/rest/"
    assert body["server_endpoint"] == f"{emu.oauth_url}/rest/"
    assert body["domain"] == emu.oauth_domain  # the docs' reading of the CONFLICT
    assert body["member_id"] == emu.member_id
    assert body["expires_in"] == 3600
    assert body["expires"] == pytest.approx(emu.clock.now() + 3600, abs=5)
    assert body["status"] == "L"
    assert body["user_id"] == 1
    assert body["scope"] == "crm,user"
    # And the token works on the portal
    assert call(emu, "app.info", body["access_token"]).status_code == 200


def test_code_is_single_use(emu: Emulator) -> None:
    code = _consent(emu)["code"]
    assert token_request(emu, grant_type="authorization_code", code=code).status_code == 200

    reuse = token_request(emu, grant_type="authorization_code", code=code)

    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"


def test_code_expires_after_30_seconds(emu: Emulator) -> None:
    # Given a code whose 30 s have passed on the emulator's clock
    fresh = emu.authorization_code()
    stale = emu.authorization_code()
    emu.clock.advance(29)
    assert token_request(emu, grant_type="authorization_code", code=fresh).status_code == 200
    emu.clock.advance(2)

    # When it is exchanged
    answer = token_request(emu, grant_type="authorization_code", code=stale)

    # Then it is refused
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


def test_refresh_rotates_and_is_single_use(emu: Emulator) -> None:
    # Given a chain from a code exchange
    first = token_request(emu, grant_type="authorization_code", code=emu.authorization_code()).json()

    # When its refresh token is spent (POST form, as CRest and b24jssdk do)
    second = token_request(emu, grant_type="refresh_token", refresh_token=first["refresh_token"])

    # Then a new pair comes back
    assert second.status_code == 200
    body = second.json()
    assert set(body) == TOKEN_FIELDS
    assert body["refresh_token"] != first["refresh_token"]
    assert body["access_token"] != first["access_token"]
    # And the spent refresh token is dead (invalid_grant)
    reuse = token_request(emu, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    # And the access token issued with it no longer works, while the new one does
    old = call(emu, "app.info", first["access_token"])
    assert old.status_code == 401
    assert old.json()["error"] == "invalid_token"
    assert call(emu, "app.info", body["access_token"]).status_code == 200
    # And the new refresh token works once more (the chain goes on)
    assert (
        token_request(emu, grant_type="refresh_token", refresh_token=body["refresh_token"]).status_code == 200
    )


def test_refresh_keeps_the_old_access_token_when_configured(emu: Emulator) -> None:
    emu.configure(invalidate_access_on_refresh=False)
    first = emu.issue_tokens()
    assert (
        token_request(emu, grant_type="refresh_token", refresh_token=first["refresh_token"]).status_code
        == 200
    )
    assert call(emu, "app.info", first["access_token"]).status_code == 200


def test_independent_chains_do_not_interfere(emu: Emulator) -> None:
    one, two = emu.issue_tokens(), emu.issue_tokens()
    assert (
        token_request(emu, grant_type="refresh_token", refresh_token=one["refresh_token"]).status_code == 200
    )
    assert (
        token_request(emu, grant_type="refresh_token", refresh_token=two["refresh_token"]).status_code == 200
    )
    assert call(emu, "app.info", two["access_token"]).status_code == 401  # rotated out with its own refresh


@pytest.mark.parametrize(
    ("overrides", "status", "error", "description"),
    [
        ({"client_id": "local.wrong.client"}, 200, "wrong_client", None),
        ({"client_secret": "not-the-secret"}, 400, "invalid_client", None),
        ({"refresh_token": ""}, 400, "invalid_request", 'No "refresh_token" parameter found'),
        ({"refresh_token": "unknown0token"}, 400, "invalid_grant", None),
        ({"grant_type": "password"}, 400, "invalid_request", None),
    ],
)
def test_token_endpoint_errors(
    emu: Emulator, overrides: dict[str, str], status: int, error: str, description: str | None
) -> None:
    params = {
        "grant_type": "refresh_token",
        "refresh_token": emu.issue_tokens()["refresh_token"],
        **overrides,
    }

    answer = token_request(emu, **params)

    assert answer.status_code == status
    body = answer.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    if description is not None:
        assert body["error_description"] == description


def test_aged_and_invalidated_refresh_tokens_are_refused(emu: Emulator) -> None:
    aged, revoked = emu.issue_tokens(), emu.issue_tokens()
    assert emu.age_refresh_tokens(181 * 86400, chain_id=aged["chain_id"]) == 1
    assert emu.invalidate_refresh_tokens(chain_id=revoked["chain_id"]) == 1

    for pair in (aged, revoked):
        answer = token_request(emu, grant_type="refresh_token", refresh_token=pair["refresh_token"])
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_grant"


def test_oauth_server_app_info_shape(emu: Emulator, token: str) -> None:
    # When the app validates its token on the OAuth server (GET and POST)
    for answer in (
        requests.get(f"{emu.server_endpoint}app.info", params={"auth": token}, timeout=5),
        requests.post(f"{emu.server_endpoint}app.info", data={"auth": token}, timeout=5),
    ):
        # Then it answers the OAuth-server shape (docs/bitrix24-facts.md#f-oauth-8), naming the install
        assert answer.status_code == 200
        result = answer.json()["result"]
        assert set(result) == {"scope", "client_id", "expires", "user_id", "install"}
        assert result["client_id"] == emu.client_id
        install = result["install"]
        assert install["member_id"] == emu.member_id
        assert install["domain"] == emu.portal_domain
        assert install["client_endpoint"] == emu.client_endpoint
        assert install["installed"] is True
        assert install["member_type"] == "PORTAL"
        assert "time" in answer.json()


def test_oauth_server_app_info_rejects_bad_tokens(emu: Emulator, token: str) -> None:
    assert (
        requests.get(f"{emu.server_endpoint}app.info", params={"auth": "nope"}, timeout=5).status_code == 401
    )
    emu.expire_access_tokens()
    expired = requests.get(f"{emu.server_endpoint}app.info", params={"auth": token}, timeout=5)
    assert expired.status_code == 401
    assert expired.json()["error"] == "expired_token"


def test_app_without_redirect_uri_sees_the_code_on_the_portal(emu_factory: Callable[..., Emulator]) -> None:
    emulator = emu_factory(redirect_uri="")
    answer = requests.post(
        emulator.authorize_url, data={"client_id": emulator.client_id}, allow_redirects=False, timeout=5
    )
    assert answer.status_code == 200
    code = re.search(r'<code id="code">([a-z0-9]+)</code>', answer.text)
    assert code is not None
    assert token_request(emulator, grant_type="authorization_code", code=code.group(1)).status_code == 200
