"""OAuthClient against the emulated OAuth server: code exchange, refresh rotation, app.info, errors."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from b24connector.bitrix24.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidToken,
    NotInstalled,
    OAuthTransientError,
)
from b24connector.bitrix24.oauth import OAuthClient
from b24connector.bitrix24.transport import new_session
from bitrix24_emulator import Emulator

pytestmark = pytest.mark.integration


def test_consent_redirect_then_code_exchange(fresh: Emulator, oauth: OAuthClient) -> None:
    # Given the portal page our authorize URL points at: a logged-in user is redirected at once
    url = oauth.authorize_url(fresh.portal_domain, "state-123")
    page = requests.get(url, allow_redirects=False, timeout=5)
    assert page.status_code == 302
    # When the redirect arrives, it carries code and server_domain
    query = parse_qs(urlsplit(page.headers["Location"]).query)
    assert query["state"] == ["state-123"]
    tokens = oauth.exchange_code(query["code"][0], server_hint=query["server_domain"][0])
    # Then the token set names the portal
    assert tokens.member_id == fresh.member_id
    assert tokens.client_endpoint == fresh.client_endpoint
    assert tokens.server_endpoint == fresh.server_endpoint
    assert tokens.expires_at > tokens.obtained_at
    assert fresh.stats()["token_requests"] == 1


def test_a_code_is_single_use(fresh: Emulator, oauth: OAuthClient) -> None:
    code = fresh.authorization_code()
    oauth.exchange_code(code)
    with pytest.raises(InvalidGrant):
        oauth.exchange_code(code)


def test_an_expired_code_is_an_invalid_grant(fresh: Emulator, oauth: OAuthClient) -> None:
    code = fresh.authorization_code()
    fresh.clock.advance(31)
    with pytest.raises(InvalidGrant):
        oauth.exchange_code(code)


def test_refresh_rotates_and_the_old_refresh_token_dies(fresh: Emulator, oauth: OAuthClient) -> None:
    first = oauth.exchange_code(fresh.authorization_code())
    second = oauth.refresh(first.refresh_token, server_hint=first.server_endpoint)
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    with pytest.raises(InvalidGrant):
        oauth.refresh(first.refresh_token)
    third = oauth.refresh(second.refresh_token)
    assert third.member_id == fresh.member_id


def test_app_info_on_the_oauth_server(fresh: Emulator, oauth: OAuthClient) -> None:
    tokens = oauth.exchange_code(fresh.authorization_code())
    info = oauth.app_info(tokens.access_token, server_hint=tokens.server_endpoint)
    assert info.member_id == fresh.member_id
    assert info.client_id == fresh.client_id
    assert info.domain == fresh.portal_domain
    assert info.client_endpoint == fresh.client_endpoint
    assert info.installed is True
    assert info.status == "L"
    assert set(info.scope.split(",")) >= {"crm"}


def test_app_info_with_an_unknown_token(fresh: Emulator, oauth: OAuthClient) -> None:
    with pytest.raises(InvalidToken):
        oauth.app_info("not-a-real-token-000000000000000")


def test_wrong_secret_and_wrong_client_id(fresh: Emulator) -> None:
    bad_secret = OAuthClient(
        fresh.client_id, lambda: "nope" * 10, [fresh.oauth_url], session=new_session(), local_mode=True
    )
    with pytest.raises(InvalidClient) as caught:
        bad_secret.exchange_code(fresh.authorization_code())
    assert "nope" * 10 not in str(caught.value)
    bad_client = OAuthClient(
        "local.000000.000",
        lambda: fresh.client_secret,
        [fresh.oauth_url],
        session=new_session(),
        local_mode=True,
    )
    with pytest.raises(InvalidClient) as caught:  # HTTP 200 wrong_client
        bad_client.exchange_code(fresh.authorization_code())
    assert caught.value.code == "wrong_client"


def test_server_errors_are_transient_and_the_code_exchange_is_not_retried(
    fresh: Emulator, oauth: OAuthClient
) -> None:
    fresh.add_faults([{"target": "oauth", "kind": "html", "status": 502, "method": "token"}])
    code = fresh.authorization_code()
    with pytest.raises(OAuthTransientError):
        oauth.exchange_code(code)
    assert fresh.stats()["token_requests"] == 1


def test_uninstalled_app_cannot_refresh(fresh: Emulator, oauth: OAuthClient) -> None:
    tokens = oauth.exchange_code(fresh.authorization_code())
    fresh.add_faults(
        [
            {
                "target": "oauth",
                "kind": "error",
                "status": 401,
                "error": "NOT_INSTALLED",
                "error_description": "Application not installed",
            }
        ]
    )
    with pytest.raises(NotInstalled):
        oauth.refresh(tokens.refresh_token)
