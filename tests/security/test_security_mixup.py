"""Mix-up and SSRF: a callback or install that names one portal but carries another's code, tokens,
endpoints or OAuth server is refused, stores nothing, and never makes a request to a foreign host
(checked on the emulators' counters and on a catch-all listener that must see 0 connections)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.leak_canary import canary_value
from tests.support.hostile import CatchAll, CraftedOAuthServer
from tests.support.rig import Rig, header, query_of

CRAFTED_PORTAL = "acme.bitrix24.com"  # allowed by the default cloud suffixes


def _reason(answer: dict[str, Any]) -> str | None:
    return header(answer, "X-Reason-Code")


def _replace(query: list[tuple[str, str]], **changes: str) -> list[tuple[str, str]]:
    return [(name, changes.get(name, value)) for name, value in query]


def _nothing_left_the_allow_list(rig: Rig, catch_all: CatchAll) -> None:
    assert catch_all.hits == 0, catch_all.requests
    assert rig.items() == []


@pytest.fixture
def two_portals(rig_factory: Callable[..., Rig]) -> Rig:
    """Portals A (rig.emulator) and B (rig.others[0]), both allow-listed with their OAuth servers."""
    return rig_factory(portals=2)


def test_callback_domain_other_than_the_states_portal_is_refused(
    two_portals: Rig, catch_all: CatchAll
) -> None:
    rig, other = two_portals, two_portals.others[0]
    consent_url, nonce = rig.authorize()  # the state names portal A
    query = _replace(rig.consent(consent_url), domain=other.portal_domain)
    answer = rig.callback(query, nonce)
    assert (answer["statusCode"], _reason(answer)) == (400, "domain_mismatch")
    assert rig.emulator.stats()["token_requests"] == other.stats()["token_requests"] == 0
    _nothing_left_the_allow_list(rig, catch_all)


def test_token_answer_for_another_member_id_is_refused(two_portals: Rig, catch_all: CatchAll) -> None:
    rig, other = two_portals, two_portals.others[0]
    consent_url, nonce = rig.authorize()
    query = _replace(rig.consent(consent_url), member_id=other.member_id)
    answer = rig.callback(query, nonce)
    assert (answer["statusCode"], _reason(answer)) == (400, "member_mismatch")
    assert rig.emulator.stats()["token_requests"] == 1  # exchanged once on A's server, then refused
    _nothing_left_the_allow_list(rig, catch_all)


def test_a_code_from_another_portal_is_refused(two_portals: Rig, catch_all: CatchAll) -> None:
    # Given a sign-in started for portal A, but the attacker substitutes a code of their own portal B
    rig, other = two_portals, two_portals.others[0]
    for member_id, reason in (
        (rig.emulator.member_id, "member_mismatch"),
        (other.member_id, "endpoint_mismatch"),
    ):
        consent_url, nonce = rig.authorize()
        state = dict(query_of(consent_url))["state"]
        foreign = dict(query_of(other.approve(state=state)))
        query = [
            ("code", foreign["code"]),
            ("state", state),
            ("domain", rig.emulator.portal_domain),
            ("member_id", member_id),
            ("server_domain", foreign["server_domain"]),
        ]
        answer = rig.callback(query, nonce)
        assert (answer["statusCode"], _reason(answer)) == (400, reason)
    assert rig.emulator.stats()["token_requests"] == 0
    assert other.stats()["token_requests"] == 2
    _nothing_left_the_allow_list(rig, catch_all)


@pytest.mark.parametrize(
    "server_domain",
    [
        "CATCHALL",
        "http://CATCHALL/",
        "http://CATCHALL/rest/",
        "oauth.bitrix.info.evil.com",
        "evil.com",
        "oauth.bitrix.info@CATCHALL",
        "EMULATOR_OAUTH@CATCHALL",
        "https://EMULATOR_OAUTH/",  # right host, wrong scheme
        "EMULATOR_OAUTH/../CATCHALL",
        "EMULATOR_OAUTH:1",
        "127.0.0.1",
    ],
)
def test_server_domain_naming_a_foreign_host_is_refused_before_anything_is_sent(
    rig: Rig, catch_all: CatchAll, server_domain: str
) -> None:
    consent_url, nonce = rig.authorize()
    hint = server_domain.replace("CATCHALL", catch_all.host).replace(
        "EMULATOR_OAUTH", rig.emulator.oauth_domain
    )
    query = _replace(rig.consent(consent_url), server_domain=hint)
    answer = rig.callback(query, nonce)
    assert (answer["statusCode"], _reason(answer)) == (400, "server_not_allowed")
    assert rig.emulator.stats()["token_requests"] == 0
    _nothing_left_the_allow_list(rig, catch_all)
    assert len(rig.items("states")) == 1  # refused before the state was spent: the user can still finish


# --- token answers from a (compromised or buggy) allow-listed OAuth server ------------------------


@pytest.fixture
def crafted_rig(rig_factory: Callable[..., Rig], crafted_oauth: CraftedOAuthServer) -> Rig:
    """Local mode, the crafted OAuth server allow-listed, and a cloud portal (https only) to sign in to."""
    return rig_factory(extra_oauth_servers=(crafted_oauth.url,))


def _token_answer(member_id: str, client_endpoint: str | None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "access_token": canary_value("access"),
        "refresh_token": canary_value("refresh"),
        "expires_in": 3600,
        "member_id": member_id,
        "server_endpoint": "https://oauth.bitrix.info/rest/",
        "domain": "oauth.bitrix.info",
        "scope": "crm,user",
        "status": "L",
        "user_id": 1,
    }
    if client_endpoint is not None:
        answer["client_endpoint"] = client_endpoint
    return answer


@pytest.mark.parametrize(
    ("client_endpoint", "stored"),
    [
        (f"https://{CRAFTED_PORTAL}/rest/", True),  # the control: a faithful answer is stored
        (f"http://{CRAFTED_PORTAL}/rest/", False),  # not https
        ("https://evil.com/rest/", False),
        (f"https://{CRAFTED_PORTAL}.evil.com/rest/", False),
        (f"https://{CRAFTED_PORTAL}@evil.com/rest/", False),
        ("https://CATCHALL/rest/", False),
        ("http://CATCHALL/rest/", False),
        (f"https://{CRAFTED_PORTAL}:8443/rest/", False),
        (f"https://{CRAFTED_PORTAL}/rest/../../evil/", False),
        (f"https://{CRAFTED_PORTAL}/rest", False),
        (f"https://{CRAFTED_PORTAL}/api/", False),
        ("https://other.bitrix24.com/rest/", False),
        (f"javascript://{CRAFTED_PORTAL}/rest/", False),
        ("", False),
        (None, False),
    ],
)
def test_token_answer_endpoints_must_be_https_on_the_same_portal(
    crafted_rig: Rig,
    crafted_oauth: CraftedOAuthServer,
    catch_all: CatchAll,
    client_endpoint: str | None,
    stored: bool,
) -> None:
    rig = crafted_rig
    member_id = "a223c6b3710f85df22e9377d6c4f7553"
    endpoint = client_endpoint.replace("CATCHALL", catch_all.host) if client_endpoint is not None else None
    crafted_oauth.token_answer = _token_answer(member_id, endpoint)
    consent_url, nonce = rig.authorize(CRAFTED_PORTAL)
    state = dict(query_of(consent_url))["state"]
    query = [
        ("code", canary_value("code")),
        ("state", state),
        ("domain", CRAFTED_PORTAL),
        ("member_id", member_id),
        ("server_domain", crafted_oauth.host),
    ]
    answer = rig.callback(query, nonce)
    assert crafted_oauth.token_requests == 1
    assert catch_all.hits == 0
    if stored:
        assert answer["statusCode"] == 200, answer
        item = rig.portal(member_id)
        assert item is not None
        assert item["client_endpoint"]["S"] == f"https://{CRAFTED_PORTAL}/rest/"
        # The stored OAuth server is the one the code went to, not the one the answer claimed
        assert item["server_endpoint"]["S"] == f"{crafted_oauth.url}/rest/"
    else:
        assert (answer["statusCode"], _reason(answer)) == (400, "endpoint_mismatch")
        assert rig.items() == []


def test_a_token_answer_without_member_id_is_refused(
    crafted_rig: Rig, crafted_oauth: CraftedOAuthServer, catch_all: CatchAll
) -> None:
    rig = crafted_rig
    crafted_oauth.token_answer = {**_token_answer("", f"https://{CRAFTED_PORTAL}/rest/")}
    consent_url, nonce = rig.authorize(CRAFTED_PORTAL)
    query = [
        ("code", canary_value("code")),
        ("state", dict(query_of(consent_url))["state"]),
        ("domain", CRAFTED_PORTAL),
        ("member_id", "a223c6b3710f85df22e9377d6c4f7553"),
        ("server_domain", crafted_oauth.host),
    ]
    answer = rig.callback(query, nonce)
    assert answer["statusCode"] in (400, 502)
    _nothing_left_the_allow_list(rig, catch_all)


# --- install payloads pointing elsewhere -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("auth[server_endpoint]", "http://CATCHALL/rest/", "server_not_allowed"),
        ("auth[server_endpoint]", "https://oauth.bitrix.info.evil.com/rest/", "server_not_allowed"),
        ("auth[client_endpoint]", "http://CATCHALL/rest/", "endpoint_mismatch"),
        ("auth[client_endpoint]", "https://evil.com/rest/", "endpoint_mismatch"),
    ],
)
def test_install_event_endpoints_pointing_elsewhere_are_refused(
    rig: Rig, catch_all: CatchAll, field: str, value: str, reason: str
) -> None:
    from bitrix24_emulator.installer import install_event_request

    fields = install_event_request(rig.emulator.state, "https://api.test/events").fields
    target = value.replace("CATCHALL", catch_all.host)
    forged = [(name, target if name == field else current) for name, current in fields]
    rig.emulator.reset()
    answer = rig.post_form("/events", forged)
    assert answer["statusCode"] == 200  # journaled first; refused when LifecycleFunction checks it
    assert rig.drain_lifecycle().of("grant") == [f"refused:{reason}"]
    assert rig.items() == []
    _nothing_left_the_allow_list(rig, catch_all)


def test_install_page_server_endpoint_pointing_elsewhere_is_refused(rig: Rig, catch_all: CatchAll) -> None:
    from bitrix24_emulator.installer import install_page_request

    # The newer install page, which names its OAuth server (the legacy one has no SERVER_ENDPOINT)
    request = install_page_request(rig.emulator.state, "https://api.test/install", legacy=False)
    forged = [
        (name, f"http://{catch_all.host}/rest/" if name == "SERVER_ENDPOINT" else value)
        for name, value in request.fields
    ]
    answer = rig.post_form("/install", forged, list(request.query.items()))
    assert (answer["statusCode"], _reason(answer)) == (403, "server_not_allowed")
    _nothing_left_the_allow_list(rig, catch_all)
