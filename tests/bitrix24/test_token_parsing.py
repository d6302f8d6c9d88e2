"""parse_token_payload against the documented samples (docs/bitrix24-facts.md#f-oauth-5 token answer, #f-app-8 ONAPPINSTALL auth)."""

from __future__ import annotations

from typing import Any

import pytest

from b24connector.bitrix24.errors import MalformedTokenPayload
from b24connector.bitrix24.tokens import parse_token_payload

# Fact sheet 2.4, refresh response per [EN] settings/oauth/auto-renewal.md.
REFRESH_RESPONSE: dict[str, Any] = {
    "access_token": "ydtj8pho532wydb5ixk78ol7uqlb7sch",
    "client_endpoint": "https://portal.bitrix24.com/rest/",
    "domain": "oauth.bitrix.info",
    "expires": 1780319382,
    "expires_in": 3600,
    "member_id": "a223c6b3710f85df22e9377d6c4f7553",
    "refresh_token": "3s6lr4kr3cv2od4v853gvrchb875bwxb",
    "scope": "crm,entity,im,task",
    "server_endpoint": "https://oauth.bitrix.info/rest/",
    "status": "F",
    "user_id": 67,
}

# Fact sheet 3.3: a real ONAPPINSTALL auth block has every value as a string.
INSTALL_AUTH: dict[str, Any] = {
    "access_token": "s6p6eclrvim6da22ft9ch94ekreb52lv",
    "expires": "1655827561",
    "expires_in": "3600",
    "scope": "crm,telephony,call,user_basic,placement,im,imopenlines",
    "domain": "some-domain.bitrix24.com",
    "server_endpoint": "https://oauth.bitrix.info/rest/",
    "status": "F",
    "client_endpoint": "https://some-domain.bitrix24.com/rest/",
    "member_id": "a223c6b3710f85df22e9377d6c4f7553",
    "user_id": "1",
    "refresh_token": "4s386p3q0tr8dy89xvmt96234v3dljg8",
    "application_token": "51856fefc120afa4b628cc82d3935cce",
}


def test_refresh_response_is_parsed_with_its_own_expiry() -> None:
    tokens = parse_token_payload(REFRESH_RESPONSE, now=1_780_315_000)
    assert tokens.access_token == REFRESH_RESPONSE["access_token"]
    assert tokens.refresh_token == REFRESH_RESPONSE["refresh_token"]
    assert tokens.expires_at == 1780319382  # `expires` wins over now + expires_in
    assert tokens.member_id == "a223c6b3710f85df22e9377d6c4f7553"
    assert tokens.client_endpoint == "https://portal.bitrix24.com/rest/"
    assert tokens.server_endpoint == "https://oauth.bitrix.info/rest/"
    assert tokens.scope == "crm,entity,im,task"
    assert tokens.status == "F"
    assert tokens.user_id == 67
    assert tokens.obtained_at == 1_780_315_000


def test_code_exchange_sample_without_expires_uses_expires_in() -> None:
    # Given the docs' code-exchange sample, which omits `expires` and `user_id`
    payload = {k: v for k, v in REFRESH_RESPONSE.items() if k not in {"expires", "user_id"}}
    tokens = parse_token_payload(payload, now=1_000_000)
    assert tokens.expires_at == 1_003_600
    assert tokens.user_id is None


def test_install_auth_with_string_values() -> None:
    tokens = parse_token_payload(INSTALL_AUTH, now=1_655_824_000)
    assert tokens.expires_at == 1655827561
    assert tokens.user_id == 1
    assert tokens.client_endpoint == "https://some-domain.bitrix24.com/rest/"
    assert tokens.scope.split(",")[0] == "crm"


def test_install_auth_doc_sample_without_expires() -> None:
    payload = {k: v for k, v in INSTALL_AUTH.items() if k not in {"expires", "user_id"}}
    tokens = parse_token_payload(payload, now=100)
    assert tokens.expires_at == 3700


@pytest.mark.parametrize("missing", ["access_token", "refresh_token", "member_id"])
@pytest.mark.parametrize("blank", [None, ""])
def test_missing_required_fields_raise_a_typed_error(missing: str, blank: str | None) -> None:
    payload = dict(REFRESH_RESPONSE)
    if blank is None:
        del payload[missing]
    else:
        payload[missing] = blank
    with pytest.raises(MalformedTokenPayload) as caught:
        parse_token_payload(payload)
    assert missing in str(caught.value)
    for secret in (REFRESH_RESPONSE["access_token"], REFRESH_RESPONSE["refresh_token"]):
        assert secret not in str(caught.value)


def test_missing_expiry_raises() -> None:
    payload = {k: v for k, v in REFRESH_RESPONSE.items() if k not in {"expires", "expires_in"}}
    with pytest.raises(MalformedTokenPayload):
        parse_token_payload(payload)


@pytest.mark.parametrize(
    ("field", "value"),
    [("expires", "soon"), ("user_id", "67a"), ("user_id", True), ("expires", [1]), ("access_token", {})],
)
def test_malformed_values_raise(field: str, value: object) -> None:
    payload = dict(REFRESH_RESPONSE)
    payload[field] = value
    with pytest.raises(MalformedTokenPayload):
        parse_token_payload(payload)


def test_repr_and_str_hide_the_tokens() -> None:
    tokens = parse_token_payload(REFRESH_RESPONSE)
    for text in (repr(tokens), str(tokens), f"{tokens}", f"{tokens!r}"):
        assert REFRESH_RESPONSE["access_token"] not in text
        assert REFRESH_RESPONSE["refresh_token"] not in text
    assert "a223c6b3710f85df22e9377d6c4f7553" in repr(tokens)


def test_access_expired_uses_skew() -> None:
    tokens = parse_token_payload(REFRESH_RESPONSE)
    assert not tokens.access_expired(now=1780319382 - 31)
    assert tokens.access_expired(now=1780319382 - 30)
