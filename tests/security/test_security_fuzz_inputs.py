"""Input classes that crashed handlers after the first fuzzing round (issue 12 point 2), pinned for good.

Numbers must come from ASCII digits within sane bounds (`str.isdigit()` also takes "²" and "٣", and
`int()` of a 5,000-digit string raises), nesting must be bounded before anything recurses, and the
same classes go through every entry point: /install, /events, /callback (token answers of an
allow-listed OAuth server) and LeadsFunction. None may be a 5xx, an "internal failure" or an ERROR
log, and none may change stored state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.leak_canary import canary_value
from tests.support.hostile import CraftedOAuthServer
from tests.support.rig import Rig, header, query_of

# Digits that str.isdigit() / str.isdecimal() accept and int() may or may not: superscripts, Arabic-Indic,
# fullwidth, Devanagari, a circled digit.
UNICODE_DIGITS = ["²", "٣", "\uff13\uff16\uff10\uff10", "१२", "①", "1²", "٣٦٠٠"]
HUGE_INTEGERS = ["9" * 5_000, "1" + "0" * 30, "-1"]
DEEP = ["[" * 40_000, "{" * 40_000, '{"a":' * 5_000 + "1" + "}" * 5_000]
PROFILE = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def installed(rig_factory: Callable[..., Rig]) -> Rig:
    """A rig whose portal is installed (so a bad input could, if it got through, change a real item)."""
    rig = rig_factory(RATE_LIMIT_PER_SECOND="10000", RATE_LIMIT_BURST="10000")
    # The install page stores the grant at once (an install event is journaled, applied later).
    assert rig.install_page()[0]["statusCode"] == 200
    assert rig.portal() is not None
    return rig


def _replaced(fields: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in fields if k != name]
    return [*kept, (name, value)]


def _check_refused(answer: dict[str, Any]) -> None:
    assert 400 <= answer["statusCode"] < 500, (answer["statusCode"], header(answer, "X-Reason-Code"))
    assert "Traceback" not in str(answer.get("body", ""))


@pytest.mark.parametrize("field", ["auth[expires]", "auth[expires_in]", "auth[user_id]"])
@pytest.mark.parametrize("value", [*UNICODE_DIGITS, *HUGE_INTEGERS, " 1"])
def test_install_event_numbers_are_ascii_and_bounded(installed: Rig, field: str, value: str) -> None:
    rig = installed
    _, fields = rig.install_event()
    before = rig.items()
    answer = rig.post_form("/events", _replaced(fields, field, value))
    _check_refused(answer)
    assert rig.items() == before


@pytest.mark.parametrize("value", [*UNICODE_DIGITS, *HUGE_INTEGERS, " 1"])
def test_install_page_lifetime_is_ascii_and_bounded(installed: Rig, value: str) -> None:
    rig = installed
    _, fields, query = rig.install_page()
    before = rig.items()
    answer = rig.post_form("/install", _replaced(fields, "AUTH_EXPIRES", value), list(query.items()))
    _check_refused(answer)
    assert rig.items() == before


@pytest.mark.parametrize("value", [*DEEP, "[" * 64 + "]" * 64, "x" * 20_000])
def test_placement_options_are_bounded_in_size_and_depth(installed: Rig, value: str) -> None:
    rig = installed
    _, fields, query = rig.install_page()
    before = rig.items()
    answer = rig.post_form("/install", [*fields, ("PLACEMENT_OPTIONS", value)], list(query.items()))
    _check_refused(answer)
    assert rig.items() == before


@pytest.mark.parametrize("depth", [5, 50, 5_000])
def test_deeply_nested_form_keys_are_refused(installed: Rig, depth: int) -> None:
    rig = installed
    _, fields = rig.install_event()
    before = rig.items()
    answer = rig.post_form("/events", [*fields, ("auth" + "[a]" * depth, "1")])
    _check_refused(answer)
    assert rig.items() == before


# --- token answers of an allow-listed OAuth server -----------------------------------------------


CRAFTED_PORTAL = "acme.bitrix24.com"


@pytest.fixture
def crafted_rig(rig_factory: Callable[..., Rig], crafted_oauth: CraftedOAuthServer) -> Rig:
    """The crafted OAuth server allow-listed, and a cloud portal to sign in to."""
    return rig_factory(extra_oauth_servers=(crafted_oauth.url,))


@pytest.mark.parametrize("field", ["expires_in", "expires", "user_id"])
@pytest.mark.parametrize("value", ["²", "٣", "\uff13\uff16\uff10\uff10", "9" * 4_000, 10**40, -5, 1e300])
def test_token_answer_numbers_are_ascii_and_bounded(
    crafted_rig: Rig, crafted_oauth: CraftedOAuthServer, field: str, value: object
) -> None:
    rig = crafted_rig
    member_id = "a223c6b3710f85df22e9377d6c4f7553"
    crafted_oauth.token_answer = {
        "access_token": canary_value("access"),
        "refresh_token": canary_value("refresh"),
        "expires_in": 3600,
        "member_id": member_id,
        "client_endpoint": f"https://{CRAFTED_PORTAL}/rest/",
        "server_endpoint": "https://oauth.bitrix.info/rest/",
        "scope": "crm",
        "status": "L",
        "user_id": 1,
        field: value,
    }
    consent_url, nonce = rig.authorize(CRAFTED_PORTAL)
    query = [
        ("code", canary_value("code")),
        ("state", dict(query_of(consent_url))["state"]),
        ("domain", CRAFTED_PORTAL),
        ("member_id", member_id),
        ("server_domain", crafted_oauth.host),
    ]
    answer = rig.callback(query, nonce)
    # A broken answer from upstream is a 502 page, never a crash (500) or a stored grant.
    assert answer["statusCode"] in (400, 502), (answer["statusCode"], header(answer, "X-Reason-Code"))
    assert rig.items() == []


# --- LeadsFunction ---------------------------------------------------------------------------------


def _leads_refused(rig: Rig, payload: Any, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    before = rig.items()
    answer = rig.leads(payload)
    logged = capsys.readouterr().out
    assert rig.items() == before
    assert answer.get("error", {}).get("code") == "INVALID_REQUEST", answer
    assert '"level":"ERROR"' not in logged.replace(" ", "")
    json.dumps(answer)
    return answer


@pytest.mark.parametrize("key", [">ID", ">=ID", "<ID", "<=ID", "ID", "=ID", "!ID", "@ID", "!@ID"])
@pytest.mark.parametrize("value", [*UNICODE_DIGITS, "9" * 30, "-1", "1.5", "", "0x10"])
def test_leads_id_conditions_take_only_ascii_integers(
    installed: Rig, capsys: pytest.CaptureFixture[str], key: str, value: str
) -> None:
    rig = installed
    given_value: Any = [value] if key.endswith("@ID") else value
    _leads_refused(rig, {"member_id": rig.emulator.member_id, "filter": {key: given_value}}, capsys)


@pytest.mark.parametrize(
    "filter_",
    [
        {"TITLE": 10**4000},  # JSON carries it (under Python's 4,300-digit limit); str() of it is costly
        {"OPPORTUNITY": -(10**40)},
        {"@STATUS_ID": [10**4000]},
        {">ID": 10**4000},
        {"TITLE": [[[["deep"]]]]},
        {"TITLE": {"a": {"b": "c"}}},
    ],
)
def test_leads_filter_values_are_bounded(
    installed: Rig, capsys: pytest.CaptureFixture[str], filter_: dict[str, Any]
) -> None:
    rig = installed
    _leads_refused(rig, {"member_id": rig.emulator.member_id, "filter": filter_}, capsys)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [10, 900])
def test_leads_deeply_nested_payloads_are_refused(
    installed: Rig, capsys: pytest.CaptureFixture[str], depth: int
) -> None:
    rig = installed
    for payload in (
        {"member_id": rig.emulator.member_id, "filter": {"TITLE": _nested(depth)}},
        {"member_id": rig.emulator.member_id, "select": _nested(depth)},
        {"member_id": rig.emulator.member_id, "limit": _nested(depth)},
    ):
        _leads_refused(rig, payload, capsys)


_hostile_numbers = st.one_of(
    st.sampled_from(UNICODE_DIGITS + HUGE_INTEGERS),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=8),
    st.integers(min_value=2**53, max_value=10**4000),
    st.integers(min_value=-(10**4000), max_value=-(2**53)),
)


def test_fuzzed_hostile_numbers_in_filters_are_refused_never_raised(
    installed: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = installed
    seen = 0

    @PROFILE
    @given(
        key=st.sampled_from([">ID", ">=ID", "<ID", "<=ID", "ID", "!ID", "@ID", "TITLE", ">OPPORTUNITY"]),
        value=_hostile_numbers,
    )
    def check(key: str, value: Any) -> None:
        nonlocal seen
        seen += 1
        if isinstance(value, str) and not key.endswith("ID"):
            return  # any short text, digits of any script included, is a fine TITLE / OPPORTUNITY value
        given_value = [value] if key.startswith("@") else value
        _leads_refused(rig, {"member_id": rig.emulator.member_id, "filter": {key: given_value}}, capsys)

    check()
    assert seen >= 30


def test_ascii_id_conditions_still_read_pages(installed: Rig) -> None:
    # The control: the same rig answers pages for sane ID conditions, so the refusals above are real.
    rig = installed
    for filter_ in ({">ID": "0"}, {">=ID": 1, "<ID": 10**6}, {"@ID": [1, "2", 3]}, {"!ID": "5"}):
        answer = rig.leads({"member_id": rig.emulator.member_id, "filter": filter_, "limit": 3})
        assert "leads" in answer, (filter_, answer)
