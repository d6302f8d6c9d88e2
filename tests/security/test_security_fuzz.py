"""Fuzzing with Hypothesis: raw HttpApi v2 events for every route and raw LeadsFunction payloads.

With healthy dependencies nothing may escape as an exception and nothing may be a 5xx: every client
mistake is a 4xx (HTTP) or an expected error answer (LeadsFunction). Derandomized, so CI runs the same
examples every time; the example counts are set in FUZZ_EXAMPLES (about a minute in all on 2 cores).
"""

from __future__ import annotations

import base64
import json
import os
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitrix24_emulator.installer import install_event_request, install_page_request, user_ready_fields
from tests.leak_canary import canary_value
from tests.support.aws_events import http_event
from tests.support.rig import COOKIE, ROUTE_FUNCTION, Rig, header, invoke, location_allowed

# About 40 s on 2 cores in all; SECURITY_FUZZ_SCALE=10 for a longer hunt (same derandomized start).
_SCALE = float(os.environ.get("SECURITY_FUZZ_SCALE", "1"))
FUZZ_EXAMPLES = {
    name: max(10, int(count * _SCALE))
    for name, count in {
        "/authorize": 1000,
        "/callback": 1000,
        "/install": 1000,
        "/events": 1000,
        "leads": 1500,
    }.items()
}
PROFILE = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
LEADS_CODES = {"INVALID_REQUEST", "PORTAL_NOT_FOUND", "REAUTH_REQUIRED", "RATE_LIMITED", "UPSTREAM_ERROR"}
RUN_COUNTS: dict[str, int] = {}
OUTCOMES: dict[str, dict[str, int]] = {}

ROUTE_PARAMS = {
    "/authorize": ["domain"],
    "/callback": ["code", "state", "domain", "member_id", "scope", "server_domain"],
    "/install": ["DOMAIN", "PROTOCOL", "LANG", "APP_SID"],
    "/events": [],
}
FORM_FIELDS = [
    "event",
    "AUTH_ID",
    "AUTH_EXPIRES",
    "REFRESH_ID",
    "SERVER_ENDPOINT",
    "APPLICATION_TOKEN",
    "APPLICATION_SCOPE",
    "member_id",
    "status",
    "PLACEMENT",
    "PLACEMENT_OPTIONS",
    "auth[access_token]",
    "auth[refresh_token]",
    "auth[expires]",
    "auth[expires_in]",
    "auth[domain]",
    "auth[member_id]",
    "auth[application_token]",
    "auth[server_endpoint]",
    "auth[client_endpoint]",
    "auth[user_id]",
    "auth[status]",
    "auth[scope]",
    "data[access_token]",
    "data[refresh_token]",
    "data[expires_in]",
    "data[domain]",
    "data[member_id]",
    "data[client_endpoint]",
    "data[server_endpoint]",
    "data[user_id]",
    "data[CLEAN]",
    "auth[]",
    "auth[a][b][c][d][e]",
    "auth",
    "data[]",
]
EVENTS = ["ONAPPINSTALL", "ONAPPUSERREADY", "ONAPPUNINSTALL", "onappinstall", "ONCRMLEADADD", ""]
# Inputs that broke parsers before: non-ASCII digits (str.isdigit() takes them, int() of "²" raises),
# numbers long enough to make int() refuse (Python's 4,300-digit limit), and nesting deep enough to
# exhaust a recursive parser (json.loads of 40,000 brackets raises RecursionError).
HOSTILE_NUMBERS = [
    "²",
    "٣",
    "\uff11\uff12",
    "3600²",
    "9" * 5_000,
    "-1",
    "+60",
    " 60",
    "1e3",
    "0x10",
    "0" * 40,
    "",
]
HOSTILE_NESTING = ["[" * 40_000, "{" * 40_000, '{"a":' * 20_000, "[" * 40_000 + "]" * 40_000]

# --- strategies ----------------------------------------------------------------------------------

_any_text = st.text(max_size=40)
_huge_text = st.integers(min_value=1_000, max_value=200_000).map(lambda n: "x" * n)
_percent_bytes = st.binary(max_size=24).map(lambda b: "".join(f"%{byte:02X}" for byte in b))
_lone_surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udc80"])
Pairs = list[tuple[str, str]]


@dataclass
class Seeds:
    """Genuine material the mutations start from, so examples reach storage, app.info and the exchange."""

    known: list[str]
    authorize: list[Pairs]
    callbacks: list[tuple[Pairs, str]]  # (query, browser nonce)
    install_pages: list[tuple[Pairs, Pairs]]  # (query, form)
    events: list[Pairs]
    cursors: list[str] = field(default_factory=list)


def _values(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        _any_text,
        st.sampled_from(known),
        st.sampled_from(HOSTILE_NUMBERS + HOSTILE_NESTING),
        st.text(alphabet=string.ascii_letters + string.digits + ".-:/@%[]\\", max_size=60),
        _huge_text,
        _lone_surrogates,
        _percent_bytes,
    )


@st.composite
def _mutated(draw: st.DrawFn, pairs: Pairs, names: list[str], known: list[str]) -> Pairs:
    """0-3 mutations: replace a value, drop a pair, duplicate with a conflict, add a pair, rename a key."""
    result = list(pairs)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["replace", "drop", "conflict", "add", "rename", "exact-duplicate"]))
        if not result and op != "add":
            op = "add"
        index = draw(st.integers(0, max(len(result) - 1, 0)))
        if op == "replace":
            result[index] = (result[index][0], draw(_values(known)))
        elif op == "drop":
            del result[index]
        elif op == "conflict":
            result.append((result[index][0], draw(_values(known))))
        elif op == "exact-duplicate":
            result.append(result[index])
        elif op == "add":
            result.append((draw(st.one_of(st.sampled_from(names), _any_text)), draw(_values(known))))
        else:
            result[index] = (draw(st.one_of(st.sampled_from(names), _any_text)), result[index][1])
    return result


def _encode(pairs: Pairs, style: str) -> str:
    if style == "raw":
        return "&".join(f"{k}={v}" for k, v in pairs)
    return "&".join(
        f"{quote(k, safe='[]', errors='surrogatepass')}={quote(v, safe='', errors='surrogatepass')}"
        for k, v in pairs
    )


@st.composite
def http_events(draw: st.DrawFn, path: str, seeds: Seeds) -> dict[str, Any]:
    """An HttpApi v2 event for `path`: genuine material, then hostile mutations of every part."""
    get_route = path in ("/authorize", "/callback")
    right_method = "GET" if get_route else "POST"
    method = (
        right_method if draw(st.integers(0, 9)) else draw(st.sampled_from(["PUT", "OPTIONS", "GET", "POST"]))
    )
    query: Pairs = []
    form: Pairs = []
    nonce = ""
    if path == "/authorize":
        query = draw(st.sampled_from(seeds.authorize))
    elif path == "/callback":
        query, nonce = draw(st.sampled_from(seeds.callbacks))
    elif path == "/install":
        query, form = draw(st.sampled_from(seeds.install_pages))
    else:
        form = draw(st.sampled_from(seeds.events))
    query = draw(_mutated(query, ROUTE_PARAMS[path] or ["x"], seeds.known))
    form = draw(_mutated(form, FORM_FIELDS, seeds.known))
    raw_query = _encode(query, draw(st.sampled_from(["quoted", "quoted", "raw"])))
    cookies = [f"{COOKIE}={nonce}"] if nonce else []
    if draw(st.integers(0, 3)) == 0:
        cookies = draw(
            st.lists(
                st.one_of(
                    _any_text,
                    _values(seeds.known).map(lambda v: f"{COOKIE}={v}"),
                    st.just(f"{COOKIE}="),
                    st.just(COOKIE),
                ),
                max_size=4,
            )
        )
    headers = {"content-type": "application/x-www-form-urlencoded"} if not get_route else {}
    if draw(st.integers(0, 3)) == 0:
        headers["content-type"] = draw(
            st.sampled_from(
                [
                    "application/x-www-form-urlencoded; charset=windows-1251",
                    "application/x-www-form-urlencoded; charset=base64",
                    "application/x-www-form-urlencoded; charset=x-nope",
                    "application/json",
                    "text/plain",
                    "multipart/form-data; boundary=x",
                    "",
                ]
            )
        )
    if draw(st.integers(0, 4)) == 0:
        headers.update(
            draw(
                st.dictionaries(
                    st.text(string.ascii_lowercase + "-", min_size=1, max_size=20), _any_text, max_size=5
                )
            )
        )
    event = http_event(method, path, query=raw_query, headers=headers, cookies=cookies)
    raw_body = _encode(form, "quoted").encode("ascii", "backslashreplace") if form else b""
    if draw(st.integers(0, 5)) == 0:
        raw_body = draw(st.one_of(st.binary(max_size=300), st.just(raw_body + b"&%FF%FE=%C3%28")))
    body_kind = draw(
        st.sampled_from(["base64"] * 6 + ["none", "text", "base64-flag-on-text", "text-flag-on-base64"])
    )
    if body_kind == "base64" and (raw_body or not get_route):
        event["body"], event["isBase64Encoded"] = base64.b64encode(raw_body).decode(), True
    elif body_kind == "text":
        event["body"], event["isBase64Encoded"] = raw_body.decode("utf-8", "replace"), False
    elif body_kind == "base64-flag-on-text":
        event["body"], event["isBase64Encoded"] = raw_body.decode("latin-1"), True
    elif body_kind == "text-flag-on-base64":
        event["body"], event["isBase64Encoded"] = base64.b64encode(raw_body).decode(), False
    for optional in ("rawQueryString", "queryStringParameters", "cookies", "body", "headers"):
        if draw(st.integers(0, 19)) == 0:
            event.pop(optional, None)
    return event


# --- invariants ----------------------------------------------------------------------------------


def _check_http_answer(answer: Any, local_portal: str) -> None:
    assert isinstance(answer, dict)
    status = answer["statusCode"]
    assert isinstance(status, int)
    assert status < 500, (status, header(answer, "X-Reason-Code"))
    assert "Traceback" not in str(answer.get("body", ""))
    location = header(answer, "Location")
    if status == 302:
        assert location is not None
        assert location_allowed(location, local_portal), location
    else:
        assert location is None


@pytest.fixture
def fuzz_rig(rig_factory: Callable[..., Rig]) -> Rig:
    """A rig whose portal is installed, so valid-looking requests reach real storage and the emulator."""
    # The shared request pacing (2/s per portal by default) would make the fuzzer wait, not find bugs
    rig = rig_factory(RATE_LIMIT_PER_SECOND="10000", RATE_LIMIT_BURST="10000")
    assert rig.install_event()[0]["statusCode"] == 200
    return rig


def _seeds(rig: Rig) -> Seeds:
    emulator = rig.emulator
    known = [
        emulator.portal_domain,
        emulator.member_id,
        emulator.oauth_domain,
        f"{emulator.oauth_url}/rest/",
        emulator.client_endpoint,
        "acme.bitrix24.com",
        "3600",
        "ONAPPUNINSTALL",
        "ONAPPINSTALL",
        "{}",
    ]
    callbacks = []
    for _ in range(12):
        consent_url, nonce = rig.authorize()
        callbacks.append((rig.consent(consent_url), nonce))
    pages = []
    for _ in range(4):
        request = install_page_request(emulator.state, "https://api.test/install")
        pages.append((list(request.query.items()), request.fields))
    events = [install_event_request(emulator.state, "https://api.test/events").fields for _ in range(4)]
    events += [_user_ready(rig) for _ in range(2)]
    events.append(rig.uninstall_fields(clean=True, application_token=canary_value("apptoken")))
    first = rig.leads({"member_id": emulator.member_id, "limit": 7, "select": ["TITLE"]})
    return Seeds(
        known=known,
        authorize=[[("domain", emulator.portal_domain)], [("domain", "acme.bitrix24.com")], [("domain", "")]],
        callbacks=callbacks,
        install_pages=pages,
        events=events,
        cursors=[first["next_cursor"]],
    )


def _user_ready(rig: Rig) -> Pairs:
    """A genuine ONAPPUSERREADY (system user's pair in `data`, the administrator's in `auth`)."""
    state = rig.emulator.state
    system, _ = state.issue_tokens("system_user", state.config.system_user_id)
    installer, _ = state.issue_tokens("install_user_ready", 1)
    return user_ready_fields(state, system, installer)


@pytest.mark.parametrize("path", ["/authorize", "/callback", "/install", "/events"])
def test_fuzzed_http_events_never_crash_and_never_5xx(fuzz_rig: Rig, path: str) -> None:
    rig = fuzz_rig
    seeds = _seeds(rig)
    RUN_COUNTS[path] = 0

    @settings(PROFILE, max_examples=FUZZ_EXAMPLES[path])
    @given(event=http_events(path, seeds))
    def check(event: dict[str, Any]) -> None:
        RUN_COUNTS[path] += 1
        function = ROUTE_FUNCTION[("POST" if path in ("/install", "/events") else "GET", path)]
        answer = invoke(function, event)
        _check_http_answer(answer, rig.emulator.portal_domain)
        outcome = f"{answer['statusCode']} {header(answer, 'X-Reason-Code')}"
        OUTCOMES.setdefault(path, {})[outcome] = OUTCOMES.setdefault(path, {}).get(outcome, 0) + 1

    check()
    print(f"fuzz {path}: {RUN_COUNTS[path]} examples, outcomes {sorted(OUTCOMES[path].items())}")
    assert RUN_COUNTS[path] >= FUZZ_EXAMPLES[path] // 2
    # Deep paths were reached, not only the parser's refusals
    assert sum(n for outcome, n in OUTCOMES[path].items() if outcome.startswith(("200", "302", "403"))) > 0
    # The installed portal survived every example (no fuzzed event was able to take it away)
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30), _huge_text
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


_FIELDS = ["ID", "TITLE", "NAME", "STATUS_ID", "DATE_CREATE", "OPPORTUNITY", "*", "UF_*", "PHONE", "EMAIL"]
_FILTER_KEYS = [">ID", ">=ID", "<ID", "=STATUS_ID", "%TITLE", "!ID", "@ID", ">=DATE_CREATE", "ID", "!%NAME"]


@st.composite
def leads_payloads(draw: st.DrawFn, member_id: str, domain: str, cursors: list[str]) -> Any:
    """A valid request of the contract, then hostile mutations (or, sometimes, any JSON at all)."""
    if draw(st.integers(0, 7)) == 0:
        return draw(_json)
    payload: dict[str, Any] = {"member_id": member_id} if draw(st.booleans()) else {"domain": domain}
    if draw(st.booleans()):
        payload["select"] = draw(st.lists(st.sampled_from(_FIELDS), max_size=5))
    if draw(st.booleans()):
        payload["filter"] = draw(
            st.dictionaries(
                st.sampled_from(_FILTER_KEYS),
                st.one_of(
                    st.integers(0, 500),
                    st.sampled_from(["NEW", "IN_PROCESS", "2024-01-01T00:00:00+03:00", "Lead"]),
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        payload["limit"] = draw(st.integers(1, 300))
    if draw(st.booleans()):
        payload["order"] = {"ID": "ASC"}
    if cursors and draw(st.integers(0, 3)) == 0:
        cursor = draw(st.sampled_from(cursors))
        payload["cursor"] = draw(
            st.one_of(
                st.just(cursor),
                st.integers(0, len(cursor) - 1).map(
                    lambda i: cursor[:i] + ("A" if cursor[i] != "A" else "B") + cursor[i + 1 :]
                ),
            )
        )
    for _ in range(draw(st.integers(0, 3))):
        key = draw(
            st.sampled_from(["member_id", "domain", "select", "filter", "order", "limit", "cursor", "extra"])
        )
        value = draw(
            st.one_of(
                _json,
                st.lists(st.sampled_from([*_FIELDS, "bad field", "", "ID; DROP"]), max_size=6),
                st.dictionaries(
                    st.sampled_from([*_FILTER_KEYS, "bad key", "", ">>ID", "ID]"]), _json, max_size=4
                ),
                st.integers(-5, 10**12),
                st.sampled_from([{"ID": "DESC"}, {"TITLE": "ASC"}, {"ID": "asc"}, {}]),
            )
        )
        if key == "extra":
            payload[draw(st.text(max_size=8))] = value
        elif draw(st.integers(0, 4)) == 0:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def test_fuzzed_leads_payloads_are_answered_never_raised(fuzz_rig: Rig) -> None:
    rig = fuzz_rig
    RUN_COUNTS["leads"] = 0
    kinds: dict[str, int] = {}

    @settings(PROFILE, max_examples=FUZZ_EXAMPLES["leads"])
    @given(payload=leads_payloads(rig.emulator.member_id, rig.emulator.portal_domain, _seeds(rig).cursors))
    def check(payload: Any) -> None:
        RUN_COUNTS["leads"] += 1
        answer = invoke("LeadsFunction", payload, remaining_ms=30_000)
        assert isinstance(answer, dict)
        if "error" in answer:
            assert set(answer) == {"error"}
            assert answer["error"]["code"] in LEADS_CODES
            assert isinstance(answer["error"]["message"], str)
            # Healthy dependencies: a caller's mistake is never an upstream or internal failure
            assert answer["error"]["code"] != "UPSTREAM_ERROR", answer
            kinds[answer["error"]["code"]] = kinds.get(answer["error"]["code"], 0) + 1
        else:
            assert set(answer) == {"leads", "count", "next_cursor"}
            assert answer["count"] == len(answer["leads"])
            kinds["page"] = kinds.get("page", 0) + 1
        json.dumps(answer)

    check()
    print(f"fuzz leads: {RUN_COUNTS['leads']} examples, outcomes {sorted(kinds.items())}")
    assert RUN_COUNTS["leads"] >= FUZZ_EXAMPLES["leads"] // 2
    assert kinds.get("page", 0) > 0  # the fuzzer reached real reads, not only the validator
    assert kinds.get("INVALID_REQUEST", 0) > 0


# --- hostile numbers and nesting, every one tried ---------------------------------------------------

_NUMBER_FIELDS = {
    "install page": ["AUTH_EXPIRES"],
    "ONAPPINSTALL": ["auth[expires]", "auth[expires_in]", "auth[user_id]"],
    "ONAPPUSERREADY": ["data[expires_in]", "data[user_id]", "auth[expires_in]", "auth[user_id]"],
}


def _genuine(rig: Rig, shape: str) -> tuple[Pairs, Pairs]:
    """(query, form) of a genuine request of `shape`."""
    if shape == "install page":
        request = install_page_request(rig.emulator.state, "https://api.test/install", legacy=False)
        return list(request.query.items()), request.fields
    if shape == "ONAPPINSTALL":
        return [], install_event_request(rig.emulator.state, "https://api.test/events").fields
    return [], _user_ready(rig)


def _hostile_variants(rig: Rig, shape: str) -> list[tuple[str, Pairs, Pairs, bool]]:
    """(label, query, form, must be refused) for every hostile value in every numeric field and more."""
    query, form = _genuine(rig, shape)
    variants = []
    for name in _NUMBER_FIELDS[shape]:
        for value in HOSTILE_NUMBERS:
            changed = [(k, value if k == name else v) for k, v in form]
            # Only ASCII digits (at most 12) are numbers; an empty optional field is just absent
            refused = value != "" or name == "AUTH_EXPIRES"
            variants.append((f"{name}={value[:12]!r}", query, changed, refused))
    for value in HOSTILE_NESTING:
        # PLACEMENT_OPTIONS is JSON the install page carries (bounded before parsing); events ignore it
        page = shape == "install page"
        variants.append(
            (f"PLACEMENT_OPTIONS={value[:12]!r}", query, [*form, ("PLACEMENT_OPTIONS", value)], page)
        )
        variants.append((f"data value {value[:12]!r}", query, [*form, ("data[VERSION]", value)], False))
    # Events fold bracket names (at most 4 deep); the install page reads flat fields and ignores it
    deep = ("data" + "[a]" * 40_000, "1")
    variants.append(("field name nested 40,000 deep", query, [*form, deep], shape != "install page"))
    variants.append(("field name with 40,000 brackets", query, [*form, ("auth" + "[" * 40_000, "1")], False))
    return variants


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/install", "install page"),
        ("/install", "ONAPPINSTALL"),
        ("/install", "ONAPPUSERREADY"),
        ("/events", "ONAPPINSTALL"),
        ("/events", "ONAPPUSERREADY"),
    ],
)
def test_unicode_digits_huge_numbers_and_deep_nesting_are_4xx_never_5xx(
    fuzz_rig: Rig, path: str, shape: str
) -> None:
    rig = fuzz_rig
    before = rig.portal()
    statuses: dict[str, int] = {}
    for label, query, form, must_refuse in _hostile_variants(rig, shape):
        body = "&".join(f"{quote(k, safe='[]')}={quote(v, safe='')}" for k, v in form).encode("ascii")
        event = http_event(
            "POST",
            path,
            query=query,
            headers={"content-type": "application/x-www-form-urlencoded"},
            body=body,
        )
        answer = invoke("InstallFunction", event)
        _check_http_answer(answer, rig.emulator.portal_domain)
        statuses[label] = answer["statusCode"]
        if must_refuse:
            assert answer["statusCode"] in (400, 413), (
                label,
                answer["statusCode"],
                header(answer, "X-Reason-Code"),
            )
    # Whatever the journal accepted, LifecycleFunction applies or refuses for good: nothing crashes it
    drained = rig.drain_lifecycle()
    assert not [o for o in drained.outcomes if o[2].startswith("retry:")], drained
    assert drained.retried == 0
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"
    assert before is not None
    print(f"{shape} on {path}: {sorted(statuses.items())}")
