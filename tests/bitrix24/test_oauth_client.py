"""OAuthClient: authorize URL, server allow-list, code exchange, refresh, app.info and error mapping."""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError, ProtocolError, SSLError

from b24connector import pkce
from b24connector.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    InvalidClient,
    InvalidGrant,
    InvalidToken,
    MalformedTokenPayload,
    NotInstalled,
    OAuthError,
    OAuthRequestError,
    OAuthTransientError,
    PaymentRequired,
    UnsafeEndpoint,
)
from b24connector.bitrix24.oauth import AppInfo, OAuthClient, parse_app_info
from b24connector.settings import load_settings
from tests.bitrix24.fakes import FakeTransport, Reply, session_with
from tests.bitrix24.test_token_parsing import REFRESH_RESPONSE

CLIENT_ID = "app.573ad8a0346747.09223434"
CLIENT_SECRET = "LJSl0lNB76B5YY6u0YVQ3AW0DrVADcRTwVr4y99PXU1BWQybWK"
CODE = "avmocpghblyi01m3h42bljvqtyd19sw1"
REFRESH_TOKEN = "4f9k4jpmg13usmybzuqknt2v9fh0q6rl"
ACCESS = "s6p6eclrvim6da22ft9ch94ekreb52lv"
SERVERS = ("https://oauth.bitrix.info", "https://oauth.bitrix24.tech")

# docs/bitrix24-facts.md#f-oauth-8: the OAuth server's app.info answer as b24pysdk parses it.
APP_INFO = {
    "result": {
        "scope": "crm,user",
        "client_id": "local.x.y",
        "expires": "2026-05-14T11:26:32+02:00",
        "user_id": 1,
        "install": {
            "installed": True,
            "version": 1,
            "status": "L",
            "scope": "crm,user",
            "domain": "Portal.bitrix24.com",
            "uri": "https://portal.bitrix24.com",
            "client_endpoint": "https://portal.bitrix24.com/rest/",
            "member_id": "a223c6b3710f85df22e9377d6c4f7553",
            "member_type": "PORTAL",
        },
    },
    "time": {"start": 1.0, "finish": 1.1},
}


def make_oauth(transport: FakeTransport, **kwargs: Any) -> OAuthClient:
    return OAuthClient(
        CLIENT_ID,
        lambda: CLIENT_SECRET,
        kwargs.pop("servers", SERVERS),
        session=session_with(transport),
        clock=lambda: 1_780_315_000.0,
        **kwargs,
    )


# --- authorize URL and PKCE ------------------------------------------------------------------------


def test_authorize_url_points_at_the_portal_with_client_id_and_state() -> None:
    client = make_oauth(FakeTransport())
    url = client.authorize_url("acme.bitrix24.com", "st&ate=1")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "acme.bitrix24.com", "/oauth/authorize/")
    assert parse_qs(parts.query) == {"client_id": [CLIENT_ID], "state": ["st&ate=1"]}


def make_pkce_pair() -> tuple[str, str]:
    """A (code_verifier, S256 code_challenge) pair per RFC 7636."""
    verifier = secrets.token_urlsafe(48)  # 64 chars, within the 43..128 range
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def test_pkce_parameters_only_when_a_challenge_is_given() -> None:
    client = make_oauth(FakeTransport())
    verifier = pkce.derive_verifier(b"k" * 32, "state", "nonce")
    challenge = pkce.challenge(verifier)
    query = parse_qs(urlsplit(client.authorize_url("acme.bitrix24.com", "s", code_challenge=challenge)).query)
    assert query["code_challenge"] == [challenge]
    assert query["code_challenge_method"] == ["S256"]
    assert "code_challenge" not in client.authorize_url("acme.bitrix24.com", "s")
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected
    assert pkce.derive_verifier(b"k" * 32, "state", "other-nonce") != verifier


def test_local_mode_uses_http_for_a_loopback_portal_only() -> None:
    client = make_oauth(FakeTransport(), local_mode=True, servers=("http://127.0.0.1:9001",))
    assert client.authorize_url("127.0.0.1:9000", "s").startswith("http://127.0.0.1:9000/oauth/authorize/?")
    assert client.authorize_url("acme.bitrix24.com", "s").startswith("https://")


@pytest.mark.parametrize("host", ["evil.com/x", "a@b.com", "acme.bitrix24.com\r\n", "", "ACME .com"])
def test_authorize_url_refuses_unnormalized_hosts(host: str) -> None:
    with pytest.raises(UnsafeEndpoint):
        make_oauth(FakeTransport()).authorize_url(host, "s")


# --- OAuth server allow-list -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, "https://oauth.bitrix.info"),
        ("", "https://oauth.bitrix.info"),
        ("oauth.bitrix.info", "https://oauth.bitrix.info"),
        ("oauth.bitrix24.tech", "https://oauth.bitrix24.tech"),
        ("OAUTH.bitrix24.tech", "https://oauth.bitrix24.tech"),
        ("https://oauth.bitrix24.tech/rest/", "https://oauth.bitrix24.tech"),
        ("https://oauth.bitrix.info/rest", "https://oauth.bitrix.info"),
        ("https://oauth.bitrix.info/", "https://oauth.bitrix.info"),
    ],
)
def test_server_hints_resolve_to_allow_listed_servers(hint: str | None, expected: str) -> None:
    assert make_oauth(FakeTransport()).resolve_server(hint) == expected


@pytest.mark.parametrize(
    "hint",
    [
        "evil.com",
        "oauth.bitrix.info.evil.com",
        "evil.oauth.bitrix.info",
        "https://oauth.bitrix.info.evil.com/rest/",
        "https://evil.com/oauth.bitrix.info/rest/",
        "http://oauth.bitrix.info/rest/",
        "oauth.bitrix.info@evil.com",
        "https://evil.com@oauth.bitrix.info/rest/",
        "https://oauth.bitrix.info/rest/../../x",
        "https://oauth.bitrix.info:444/rest/",
        "oauth.bitrix.info:443",
    ],
)
def test_foreign_server_hints_are_refused(hint: str) -> None:
    transport = FakeTransport()
    client = make_oauth(transport)
    with pytest.raises(UnsafeEndpoint):
        client.resolve_server(hint)
    with pytest.raises(UnsafeEndpoint):
        client.exchange_code(CODE, server_hint=hint)
    assert transport.sent == []


@pytest.mark.parametrize(
    ("servers", "local_mode"),
    [
        (("http://oauth.bitrix.info",), False),
        (("http://oauth.bitrix.info",), True),
        (("http://127.0.0.1:9000",), False),
        (("ftp://oauth.bitrix.info",), False),
        (("https://oauth.bitrix.info/oauth",), False),
        (("https://user@oauth.bitrix.info",), False),
        ((), False),
    ],
)
def test_unsafe_server_lists_fail_at_construction(servers: tuple[str, ...], local_mode: bool) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        OAuthClient(CLIENT_ID, lambda: CLIENT_SECRET, servers, local_mode=local_mode)


def test_local_mode_accepts_a_loopback_http_server() -> None:
    client = OAuthClient(CLIENT_ID, lambda: CLIENT_SECRET, ["http://127.0.0.1:9000/"], local_mode=True)
    assert client.servers == ["http://127.0.0.1:9000"]
    assert client.resolve_server("127.0.0.1:9000") == "http://127.0.0.1:9000"


# --- code exchange and refresh ----------------------------------------------------------------------


def test_exchange_code_posts_one_form_to_the_hinted_server() -> None:
    transport = FakeTransport().queue(Reply(payload=REFRESH_RESPONSE))
    tokens = make_oauth(transport).exchange_code(CODE, server_hint="oauth.bitrix24.tech")
    [sent] = transport.sent
    assert sent.method == "POST"
    assert sent.url == "https://oauth.bitrix24.tech/oauth/token/"
    assert sent.form() == {
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": CODE,
    }
    assert sent.timeout == (3.05, 30.0)
    assert tokens.refresh_token == REFRESH_RESPONSE["refresh_token"]
    assert tokens.expires_at == REFRESH_RESPONSE["expires"]


def test_exchange_code_sends_the_verifier_only_with_pkce() -> None:
    transport = FakeTransport().queue(Reply(payload=REFRESH_RESPONSE))
    make_oauth(transport).exchange_code(CODE, code_verifier="v" * 50)
    assert transport.sent[0].form()["code_verifier"] == "v" * 50


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=503, payload={"error": "TEMPORARILY_UNAVAILABLE"}),
        Reply(status=502, body=b"<html>bad gateway</html>"),
        Reply(raises=requests.ConnectionError("connection reset")),
        Reply(raises=requests.ReadTimeout("read timed out")),
    ],
)
def test_exchange_code_is_never_retried(reply: Reply) -> None:
    transport = FakeTransport().queue(reply, Reply(payload=REFRESH_RESPONSE))
    with pytest.raises(OAuthTransientError):
        make_oauth(transport).exchange_code(CODE)
    assert len(transport.sent) == 1


def test_refresh_posts_one_form_and_returns_the_rotated_pair() -> None:
    transport = FakeTransport().queue(Reply(payload=REFRESH_RESPONSE))
    tokens = make_oauth(transport).refresh(REFRESH_TOKEN, server_hint="https://oauth.bitrix.info/rest/")
    [sent] = transport.sent
    assert sent.url == "https://oauth.bitrix.info/oauth/token/"
    assert sent.form() == {
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
    }
    assert REFRESH_TOKEN not in sent.url
    assert CLIENT_SECRET not in sent.url
    assert tokens.refresh_token != REFRESH_TOKEN


def test_redirects_from_the_oauth_server_are_not_followed() -> None:
    transport = FakeTransport().queue(
        Reply(302, body=b"", headers={"Location": "https://oauth.bitrix.info/oauth/token/"})
    )
    with pytest.raises(OAuthTransientError):
        make_oauth(transport).exchange_code(CODE)
    assert len(transport.sent) == 1


def test_refresh_is_not_retried_internally() -> None:
    transport = FakeTransport().queue(Reply(status=500, payload={"error": "INTERNAL"}), Reply(payload={}))
    with pytest.raises(OAuthTransientError):
        make_oauth(transport).refresh(REFRESH_TOKEN)
    assert len(transport.sent) == 1


def test_the_secret_is_read_per_request() -> None:
    transport = FakeTransport().queue(Reply(payload=REFRESH_RESPONSE), Reply(payload=REFRESH_RESPONSE))
    secrets = iter(["first-secret", "second-secret"])
    client = OAuthClient(CLIENT_ID, lambda: next(secrets), SERVERS, session=session_with(transport))
    client.refresh(REFRESH_TOKEN)
    client.refresh(REFRESH_TOKEN)
    assert [s.form()["client_secret"] for s in transport.sent] == ["first-secret", "second-secret"]


@pytest.mark.parametrize("missing", ["access_token", "refresh_token", "member_id"])
def test_success_without_required_fields_is_a_typed_error(missing: str) -> None:
    payload = {k: v for k, v in REFRESH_RESPONSE.items() if k != missing}
    transport = FakeTransport().queue(Reply(payload=payload))
    with pytest.raises(MalformedTokenPayload):
        make_oauth(transport).refresh(REFRESH_TOKEN)


def test_empty_inputs_send_nothing() -> None:
    transport = FakeTransport()
    client = make_oauth(transport)
    with pytest.raises(OAuthRequestError):
        client.exchange_code("")
    with pytest.raises(OAuthRequestError):
        client.refresh("")
    with pytest.raises(InvalidToken):
        client.app_info("")
    assert transport.sent == []


# --- error mapping (fact sheet 2.8) -----------------------------------------------------------------

ERROR_ROWS: list[tuple[Reply, type[Bitrix24Error], str]] = [
    (
        Reply(400, {"error": "invalid_grant", "error_description": "Invalid grant"}),
        InvalidGrant,
        "invalid_grant",
    ),
    (Reply(400, {"error": "bad_verification_code"}), InvalidGrant, "bad_verification_code"),
    (Reply(401, {"error": "invalid_client"}), InvalidClient, "invalid_client"),
    (Reply(400, {"error": "invalid_client"}), InvalidClient, "invalid_client"),
    (
        Reply(200, {"error": "wrong_client", "error_description": "Wrong client"}),
        InvalidClient,
        "wrong_client",
    ),
    (
        Reply(200, {"error": "PAYMENT_REQUIRED", "error_description": "Payment required"}),
        PaymentRequired,
        "PAYMENT_REQUIRED",
    ),
    (
        Reply(401, {"error": "NOT_INSTALLED", "error_description": "Application not installed"}),
        NotInstalled,
        "NOT_INSTALLED",
    ),
    (
        Reply(401, {"error": "ERROR_OAUTH", "error_description": "Application not installed"}),
        NotInstalled,
        "ERROR_OAUTH",
    ),
    (
        Reply(400, {"error": "invalid_request", "error_description": 'No "refresh_token" parameter found'}),
        OAuthRequestError,
        "invalid_request",
    ),
    (Reply(403, {"error": "invalid_scope"}), OAuthRequestError, "invalid_scope"),
    (Reply(403, {"error": "insufficient_scope"}), OAuthRequestError, "insufficient_scope"),
    (Reply(401, {"error": "expired_token"}), ExpiredToken, "expired_token"),
    (Reply(401, {"error": "invalid_token"}), InvalidToken, "invalid_token"),
    (Reply(401, {"error": "NO_AUTH_FOUND"}), InvalidToken, "NO_AUTH_FOUND"),
    (Reply(400, {"error": "SOMETHING_NEW"}), OAuthError, "SOMETHING_NEW"),
    (Reply(400, {"error": {"code": "invalid_grant", "message": "v3"}}), InvalidGrant, "invalid_grant"),
    (Reply(404, {"foo": 1}), OAuthError, "HTTP_404"),
    (Reply(500, {"error": "INTERNAL_SERVER_ERROR"}), OAuthTransientError, "INTERNAL_SERVER_ERROR"),
    (Reply(503, {"result": {}}), OAuthTransientError, "HTTP_503"),
    (Reply(502, body=b"<html><body>502 Bad Gateway</body></html>"), OAuthTransientError, "NON_JSON_RESPONSE"),
    (Reply(200, body=b"<!DOCTYPE html><html>maintenance</html>"), OAuthTransientError, "NON_JSON_RESPONSE"),
    (Reply(404, body=b"<html>not found</html>"), OAuthTransientError, "NON_JSON_RESPONSE"),
    (
        Reply(302, body=b"", headers={"Location": "https://evil.com/"}),
        OAuthTransientError,
        "NON_JSON_RESPONSE",
    ),
    (Reply(200, payload=["not", "an", "object"]), OAuthTransientError, "NON_JSON_RESPONSE"),
    (Reply(raises=requests.ConnectTimeout("timed out")), OAuthTransientError, "TIMEOUT"),
    (Reply(raises=requests.ConnectionError("refused")), OAuthTransientError, "CONNECTION_ERROR"),
    (Reply(raises=requests.exceptions.SSLError("bad cert")), OAuthTransientError, "CONNECTION_ERROR"),
]


@pytest.mark.parametrize(("reply", "error_class", "code"), ERROR_ROWS)
def test_oauth_errors_map_to_typed_exceptions(reply: Reply, error_class: type[Exception], code: str) -> None:
    transport = FakeTransport().queue(reply)
    with pytest.raises(error_class) as caught:
        make_oauth(transport).refresh(REFRESH_TOKEN)
    error = caught.value
    assert isinstance(error, Bitrix24Error)
    assert type(error) is error_class
    assert error.code == code
    assert error.retryable is isinstance(error, OAuthTransientError)
    # No requests exception (whose text may carry a URL) is chained into ours.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    for secret in (CLIENT_SECRET, REFRESH_TOKEN):
        assert secret not in str(error)
        assert secret not in repr(error)


def _wrapped(reason: Exception) -> requests.ConnectionError:
    """What requests raises when urllib3 gave up with `reason` (no retries configured)."""
    return requests.ConnectionError(MaxRetryError(None, "/oauth/token/", reason))  # type: ignore[arg-type]


def _raised(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    ("raised", "request_sent"),
    [
        # provably never sent: no connection was ever opened
        (requests.ConnectTimeout("connect timed out"), False),
        (_wrapped(NewConnectionError(None, "[Errno 111] Connection refused")), False),  # type: ignore[arg-type]
        (_wrapped(NameResolutionError("oauth.bitrix.info", None, OSError("no such host"))), False),  # type: ignore[arg-type]
        # may have reached the server
        (requests.ReadTimeout("read timed out"), True),
        (requests.ConnectionError("refused"), True),  # nothing says where it failed
        (requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104))), True),
        (requests.exceptions.ChunkedEncodingError("broken"), True),
        (requests.exceptions.SSLError(_wrapped(SSLError(_raised(ssl.SSLEOFError(8, "EOF"))))), True),
    ],
    ids=[
        "connect-timeout",
        "refused",
        "dns",
        "read-timeout",
        "bare-connection-error",
        "reset",
        "chunked",
        "tls-eof-outside-connect",
    ],
)
def test_transport_failures_say_whether_the_request_may_have_reached_the_server(
    raised: Exception, request_sent: bool
) -> None:
    transport = FakeTransport().queue(Reply(raises=raised))
    with pytest.raises(OAuthTransientError) as caught:
        make_oauth(transport).refresh(REFRESH_TOKEN)
    assert caught.value.request_sent is request_sent


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500, {"error": "INTERNAL_SERVER_ERROR"}),
        Reply(502, body=b"<html>Bad Gateway</html>"),
        Reply(200, body=b"<html>maintenance</html>"),
    ],
)
def test_answers_from_the_server_were_sent(reply: Reply) -> None:
    transport = FakeTransport().queue(reply)
    with pytest.raises(OAuthTransientError) as caught:
        make_oauth(transport).refresh(REFRESH_TOKEN)
    assert caught.value.request_sent is True


def test_wrong_client_on_http_200_is_not_mistaken_for_tokens() -> None:
    payload = dict(REFRESH_RESPONSE, error="wrong_client")
    transport = FakeTransport().queue(Reply(200, payload))
    with pytest.raises(InvalidClient):
        make_oauth(transport).exchange_code(CODE)


def test_server_echoing_secrets_in_descriptions_is_scrubbed() -> None:
    description = f"bad code {CODE} for secret {CLIENT_SECRET}"
    transport = FakeTransport().queue(
        Reply(400, {"error": "invalid_grant", "error_description": description})
    )
    with pytest.raises(InvalidGrant) as caught:
        make_oauth(transport).exchange_code(CODE)
    assert CODE not in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)
    assert "***" in str(caught.value)


def test_client_repr_hides_the_secret() -> None:
    client = make_oauth(FakeTransport())
    assert CLIENT_SECRET not in repr(client)
    assert CLIENT_ID in repr(client)


# --- app.info ---------------------------------------------------------------------------------------


def test_app_info_posts_the_token_in_the_body_and_parses_the_install_block() -> None:
    transport = FakeTransport().queue(Reply(payload=APP_INFO))
    info = make_oauth(transport).app_info(ACCESS, server_hint="https://oauth.bitrix.info/rest/")
    [sent] = transport.sent
    assert sent.url == "https://oauth.bitrix.info/rest/app.info"
    assert sent.form() == {"auth": ACCESS}
    assert info == AppInfo(
        member_id="a223c6b3710f85df22e9377d6c4f7553",
        domain="portal.bitrix24.com",
        client_id="local.x.y",
        client_endpoint="https://portal.bitrix24.com/rest/",
        installed=True,
        status="L",
        scope="crm,user",
        user_id=1,
    )


@pytest.mark.parametrize(("raw", "installed"), [(False, False), ("N", False), ("Y", True), (1, True)])
def test_app_info_installed_flag_forms(raw: object, installed: bool) -> None:
    payload = {"result": dict(APP_INFO["result"], install=dict(APP_INFO["result"]["install"], installed=raw))}  # type: ignore[call-overload]
    assert parse_app_info(payload).installed is installed


@pytest.mark.parametrize(
    "payload",
    [
        {"result": {"client_id": "x"}},
        {"result": []},
        {"result": {"install": {"installed": True}}},
        {},
    ],
)
def test_app_info_without_an_install_block_is_an_error(payload: dict[str, Any]) -> None:
    with pytest.raises(OAuthError, match="MALFORMED_APP_INFO"):
        parse_app_info(payload)


def test_app_info_with_a_bad_token_maps_to_invalid_token() -> None:
    transport = FakeTransport().queue(
        Reply(401, {"error": "invalid_token", "error_description": "Unable to get application by token"})
    )
    with pytest.raises(InvalidToken):
        make_oauth(transport).app_info(ACCESS)


def test_client_from_settings() -> None:
    env = {
        "BITRIX24_CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET_ID": "s",
        "CURSOR_SECRET_ID": "c",
        "PORTALS_TABLE": "p",
        "STATES_TABLE": "s",
        "RATE_LIMIT_TABLE": "r",
        "TOKEN_KEY_ID": "k",
        "REFRESH_QUEUE_URL": "q",
        "RESCUE_QUEUE_URL": "r",
        "LIFECYCLE_QUEUE_URL": "l",
        "OAUTH_SERVERS": "https://oauth.bitrix24.tech/,https://oauth.bitrix.info",
        "HTTP_TIMEOUT_SECONDS": "7",
    }
    transport = FakeTransport().queue(Reply(payload=REFRESH_RESPONSE))
    client = OAuthClient.from_settings(
        load_settings(env), lambda: CLIENT_SECRET, session=session_with(transport)
    )
    assert client.servers == ["https://oauth.bitrix24.tech", "https://oauth.bitrix.info"]
    client.refresh(REFRESH_TOKEN)
    assert transport.sent[0].url == "https://oauth.bitrix24.tech/oauth/token/"
    assert transport.sent[0].timeout == (3.05, 7.0)
