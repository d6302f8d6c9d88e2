"""The handler modules end to end on AWS-shaped events, with the use cases wired to in-memory fakes."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b24connector import wiring
from b24connector.authorization import AuthorizationFlow
from b24connector.bitrix24.list_query import ListQuery
from b24connector.handlers import (
    authorize,
    callback,
    install,
    leads,
    refresh_sweep,
    refresh_worker,
    token_rescue,
)
from b24connector.install import Installer
from b24connector.install import event_of as journal_event_of
from b24connector.leads import CursorCodec, LeadsReader, OpenPortal
from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES, get_settings
from b24connector.token_refresh.outcomes import RefreshOutcome
from b24connector.token_refresh.rescue import RescueWorker
from b24connector.token_refresh.scheduled import RefreshSweep, RefreshWorker
from tests.support.aws_events import FakeContext, form_post, http_event, scheduler_event, sqs_event
from tests.support.emf import emf_counts
from tests.support.use_case_fakes import (
    CLIENT_ID,
    Clock,
    FakeJournal,
    FakeOAuth,
    FakeRoles,
    FakeStates,
    FakeStore,
)

PORTAL = "acme.bitrix24.com"
MEMBER = "a223c6b3710f85df22e9377d6c4f7553"
APP_TOKEN = "51856fefc120afa4b628cc82d3935cce"
APP_TOKEN_HASH = hashlib.sha256(APP_TOKEN.encode()).hexdigest()
COOKIE = "__Host-b24-oauth"
POLICY = PortalPolicy(DEFAULT_PORTAL_SUFFIXES)

ENV = {
    "BITRIX24_CLIENT_ID": CLIENT_ID,
    "CLIENT_SECRET_ID": "b24/client-secret",
    "CURSOR_SECRET_ID": "b24/cursor-key",
    "PORTALS_TABLE": "portals",
    "STATES_TABLE": "states",
    "RATE_LIMIT_TABLE": "rate-limit",
    "TOKEN_KEY_ID": "alias/token-key",
    "REFRESH_QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/123456789012/refresh",
    "RESCUE_QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/123456789012/rescue",
    "LIFECYCLE_QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/123456789012/lifecycle",
    "INSTALL_FINISH_SCRIPT_URL": "//api.bitrix24.com/api/v1/",
}


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.states = FakeStates(self.clock)
        self.oauth = FakeOAuth(self.clock)
        self.store = FakeStore()
        self.journal = FakeJournal()
        self.installer = Installer(
            POLICY,
            self.oauth,
            self.store,
            client_id=CLIENT_ID,
            journal=self.journal,
            roles=FakeRoles(self.oauth),
            removal=None,
            clock=self.clock,
        )
        self.flow = AuthorizationFlow(POLICY, self.states, self.oauth, self.installer, ttl_seconds=600)

    def apply_journal(self) -> None:
        """What LifecycleFunction does: apply every journaled install event (others stay queued)."""
        pending, self.journal.jobs = self.journal.jobs, []
        for job in pending:
            if job.kind == "grant":
                self.installer.apply(journal_event_of(job))
            else:
                self.journal.jobs.append(job)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    built = World()
    monkeypatch.setattr(wiring, "authorization_flow", lambda conf: built.flow)
    monkeypatch.setattr(wiring, "installer", lambda conf: built.installer)
    monkeypatch.setattr(wiring, "portal_policy", lambda conf: POLICY)
    yield built
    get_settings.cache_clear()


def _cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


# --- authorize + callback -----------------------------------------------------------------------


def test_authorize_redirects_with_a_host_cookie(world: World) -> None:
    answer = authorize.handler(http_event("GET", "/authorize", query=[("domain", PORTAL)]), FakeContext())
    assert answer["statusCode"] == 302
    location = urlparse(answer["headers"]["Location"])
    assert location.netloc == PORTAL
    assert answer["headers"]["Cache-Control"] == "no-store"
    (cookie,) = answer["cookies"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=600"):
        assert attribute in cookie
    assert "Domain=" not in cookie
    assert len(world.states.items) == 1


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ([], "domain_missing"),
        ([("domain", "")], "domain_missing"),
        ([("domain", PORTAL), ("domain", "evil.bitrix24.com")], "domain_duplicate"),
        ([("domain", "evil.example.com")], "domain_invalid"),
        ("domain=%FF", "query_invalid_encoding"),
    ],
)
def test_authorize_refuses_bad_domains_with_a_page(world: World, query: Any, reason: str) -> None:
    answer = authorize.handler(http_event("GET", "/authorize", query=query), FakeContext())
    assert answer["statusCode"] == 400
    assert answer["headers"]["X-Reason-Code"] == reason
    assert answer["headers"]["Content-Type"].startswith("text/html")
    assert reason in answer["body"]
    assert "cookies" not in answer
    assert world.states.items == {}


def test_authorize_only_answers_get(world: World) -> None:
    answer = authorize.handler(http_event("POST", "/authorize", query=[("domain", PORTAL)]), FakeContext())
    assert answer["statusCode"] == 405


def _start(world: World) -> tuple[str, str]:
    answer = authorize.handler(http_event("GET", "/authorize", query=[("domain", PORTAL)]), FakeContext())
    state = parse_qs(urlparse(answer["headers"]["Location"]).query)["state"][0]
    return state, _cookie_value(answer["cookies"][0])


def _callback_event(world: World, state: str, nonce: str | None, **overrides: str) -> dict[str, Any]:
    params = {
        "code": world.oauth.issue_code(MEMBER, PORTAL),
        "state": state,
        "domain": PORTAL,
        "member_id": MEMBER,
        "scope": "crm,user",
        "server_domain": "oauth.bitrix.info",
        **overrides,
    }
    cookies = [f"{COOKIE}={nonce}", "other=1"] if nonce else []
    return http_event("GET", "/callback", query=list(params.items()), cookies=cookies)


def test_callback_connects_and_clears_the_cookie(world: World) -> None:
    state, nonce = _start(world)
    answer = callback.handler(_callback_event(world, state, nonce), FakeContext())
    assert answer["statusCode"] == 200
    assert PORTAL in answer["body"]
    assert answer["cookies"] == [f"{COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"]
    assert world.store.portals[MEMBER].domain == PORTAL


def test_callback_redirects_when_a_success_url_is_set(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUCCESS_REDIRECT_URL", "https://app.example.com/connected")
    get_settings.cache_clear()
    state, nonce = _start(world)
    answer = callback.handler(_callback_event(world, state, nonce), FakeContext())
    assert answer["statusCode"] == 302
    assert answer["headers"]["Location"] == "https://app.example.com/connected"
    assert answer["cookies"][0].startswith(f"{COOKIE}=; Max-Age=0")


@pytest.mark.parametrize(
    ("mutate", "status", "reason"),
    [
        (lambda w, s, n: _callback_event(w, s, None), 400, "cookie_missing"),
        (lambda w, s, n: _callback_event(w, s, "x" * 43), 400, "cookie_mismatch"),
        (lambda w, s, n: _callback_event(w, "y" * 43, n), 400, "state_missing"),
        (lambda w, s, n: _callback_event(w, s, n, domain="other.bitrix24.com"), 400, "domain_mismatch"),
        (lambda w, s, n: _callback_event(w, s, n, member_id="f" * 32), 400, "member_mismatch"),
        (lambda w, s, n: _callback_event(w, s, n, server_domain="evil.com"), 400, "server_not_allowed"),
        (lambda w, s, n: _callback_event(w, s, n, code="forged"), 400, "code_rejected"),
    ],
)
def test_callback_failures_are_4xx_pages_and_store_nothing(
    world: World, mutate: Any, status: int, reason: str
) -> None:
    state, nonce = _start(world)
    answer = callback.handler(mutate(world, state, nonce), FakeContext())
    assert (answer["statusCode"], answer["headers"]["X-Reason-Code"]) == (status, reason)
    assert answer["cookies"][0].startswith(f"{COOKIE}=; Max-Age=0")
    assert world.store.portals == {}
    assert "Traceback" not in answer["body"]


def test_callback_replay_is_refused(world: World) -> None:
    state, nonce = _start(world)
    event = _callback_event(world, state, nonce)
    assert callback.handler(event, FakeContext())["statusCode"] == 200
    again = callback.handler(event, FakeContext())
    assert (again["statusCode"], again["headers"]["X-Reason-Code"]) == (400, "state_used")
    assert world.store.writes == 1


def test_callback_when_the_oauth_server_is_down_is_a_503(world: World) -> None:
    from b24connector.bitrix24.errors import OAuthTransientError

    state, nonce = _start(world)
    world.oauth.fail_exchange = OAuthTransientError("CONNECTION_ERROR", "down")
    answer = callback.handler(_callback_event(world, state, nonce), FakeContext())
    assert (answer["statusCode"], answer["headers"]["X-Reason-Code"]) == (503, "oauth_unavailable")
    assert world.store.portals == {}


def test_an_unexpected_error_is_a_generic_500(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(conf: Any) -> Any:
        raise RuntimeError("refresh_token=abc123secret")

    monkeypatch.setattr(wiring, "authorization_flow", broken)
    answer = callback.handler(_callback_event(world, "s" * 43, "n" * 43), FakeContext())
    assert (answer["statusCode"], answer["headers"]["X-Reason-Code"]) == (500, "internal_error")
    assert "abc123secret" not in answer["body"]
    assert "RuntimeError" not in answer["body"]


# --- install and events -------------------------------------------------------------------------


def _page_fields(world: World, **changes: str) -> list[tuple[str, str]]:
    tokens = world.oauth.new_tokens(MEMBER, PORTAL)
    fields = {
        "AUTH_ID": tokens.access_token,
        "AUTH_EXPIRES": "3600",
        "REFRESH_ID": tokens.refresh_token,
        "SERVER_ENDPOINT": "https://oauth.bitrix.info/rest/",
        "APPLICATION_TOKEN": APP_TOKEN,
        "APPLICATION_SCOPE": "crm,user",
        "member_id": MEMBER,
        "status": "L",
        "PLACEMENT": "DEFAULT",
        "PLACEMENT_OPTIONS": "{}",
        **changes,
    }
    return list(fields.items())


PAGE_QUERY = [
    ("DOMAIN", PORTAL),
    ("PROTOCOL", "1"),
    ("LANG", "en"),
    ("APP_SID", "dd8cec11e347088fe87c44870a9f1dba"),
]


def _install_event_fields(world: World, name: str = "ONAPPINSTALL") -> list[tuple[str, str]]:
    tokens = world.oauth.new_tokens(MEMBER, PORTAL)
    return [
        ("event", name),
        ("data[VERSION]", "1"),
        ("data[ACTIVE]", "Y"),
        ("data[INSTALLED]", "Y"),
        ("data[LANGUAGE_ID]", "en"),
        ("ts", "1696527000"),
        ("auth[access_token]", tokens.access_token),
        ("auth[expires]", str(int(world.clock()) + 3600)),
        ("auth[expires_in]", "3600"),
        ("auth[scope]", "crm,user"),
        ("auth[domain]", PORTAL),
        ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
        ("auth[status]", "L"),
        ("auth[client_endpoint]", f"https://{PORTAL}/rest/"),
        ("auth[member_id]", MEMBER),
        ("auth[user_id]", "1"),
        ("auth[refresh_token]", tokens.refresh_token),
        ("auth[application_token]", APP_TOKEN),
    ]


def test_install_page_stores_and_finishes_the_install(world: World) -> None:
    answer = install.handler(form_post("/install", _page_fields(world), query=PAGE_QUERY), FakeContext())
    assert answer["statusCode"] == 200
    assert "BX24.installFinish()" in answer["body"]
    assert 'src="//api.bitrix24.com/api/v1/"' in answer["body"]
    assert "frame-ancestors" not in answer["headers"]["Content-Security-Policy"]
    assert world.store.portals[MEMBER].application_token_hash == APP_TOKEN_HASH


def test_install_event_is_accepted_at_once_and_applied_from_the_journal(world: World) -> None:
    answer = install.handler(form_post("/events", _install_event_fields(world)), FakeContext())
    assert (answer["statusCode"], json.loads(answer["body"])) == (200, {"status": "accepted"})
    assert (world.store.writes, world.oauth.app_info_calls, world.journal.kinds()) == (0, [], ["grant"])
    world.apply_journal()
    assert world.store.portals[MEMBER].is_active


def test_install_event_posted_to_the_install_url_works_too(world: World) -> None:
    answer = install.handler(form_post("/install", _install_event_fields(world)), FakeContext())
    assert json.loads(answer["body"]) == {"status": "accepted"}


def test_uninstalls_are_accepted_for_confirmation_and_change_nothing_yet(world: World) -> None:
    install.handler(form_post("/events", _install_event_fields(world)), FakeContext())
    world.apply_journal()
    world.journal.jobs.clear()  # the install's subscription check
    # Unproven by itself (a matching application token included): nothing changes here, and with no way
    # to ask Bitrix24 (no removal probe in this world) the handler refuses.
    for token in ("0" * 32, APP_TOKEN):
        answer = install.handler(
            form_post(
                "/events",
                [
                    ("event", "ONAPPUNINSTALL"),
                    ("auth[member_id]", MEMBER),
                    ("auth[application_token]", token),
                ],
            ),
            FakeContext(),
        )
        assert (answer["statusCode"], json.loads(answer["body"])["error"]["code"]) == (
            403,
            "uninstall_not_confirmed",
        )
        assert world.store.portals[MEMBER].is_active
    # An unknown portal is refused the same way, without a journal entry
    unknown = install.handler(
        form_post(
            "/events",
            [
                ("event", "ONAPPUNINSTALL"),
                ("auth[member_id]", "f" * 32),
                ("auth[application_token]", APP_TOKEN),
            ],
        ),
        FakeContext(),
    )
    assert (unknown["statusCode"], world.journal.jobs) == (403, [])


def _raw_post(
    path: str, body: bytes, content_type: str | None = "application/x-www-form-urlencoded"
) -> dict[str, Any]:
    headers = {"content-type": content_type} if content_type else {}
    return http_event(
        "POST", path, headers=headers, body=body, query=PAGE_QUERY if path == "/install" else ()
    )


@pytest.mark.parametrize("path", ["/install", "/events"])
@pytest.mark.parametrize(
    ("event_of", "status", "reason"),
    [
        (
            lambda p: _raw_post(p, b'{"event":"ONAPPINSTALL"}', "application/json"),
            415,
            "content_type_unsupported",
        ),
        (lambda p: _raw_post(p, b"event=ONAPPINSTALL", None), 415, "content_type_unsupported"),
        (lambda p: _raw_post(p, b"event=%FF%FE"), 400, "body_invalid_encoding"),
        (lambda p: _raw_post(p, b"a=" + b"x" * 9_000_000), 413, "body_too_large"),
        (lambda p: http_event("GET", p), 405, "method_not_allowed"),
        (lambda p: _raw_post(p, b"event=ONAPPINSTALL&event=ONAPPUNINSTALL"), 400, "event_duplicate"),
        (lambda p: _raw_post(p, b"event=ONCRMDEALADD&auth%5Bmember_id%5D=x"), 400, "event_unsupported"),
        # A lead event without its application token never reaches storage.
        (
            lambda p: _raw_post(p, b"event=ONCRMLEADADD&auth%5Bmember_id%5D=x"),
            400,
            "application_token_invalid",
        ),
        (lambda p: _raw_post(p, b"event=ONAPPINSTALL"), 400, "auth_missing"),
        (
            lambda p: _raw_post(p, b"event=ONAPPUNINSTALL&auth%5Bmember_id%5D=m"),
            400,
            "application_token_missing",
        ),
    ],
)
def test_bad_posts_are_4xx_and_change_nothing(
    world: World, path: str, event_of: Any, status: int, reason: str
) -> None:
    answer = install.handler(event_of(path), FakeContext())
    assert (answer["statusCode"], answer["headers"]["X-Reason-Code"]) == (status, reason)
    assert world.store.writes == 0
    assert world.oauth.app_info_calls == []


def test_bad_install_pages_are_html(world: World) -> None:
    answer = install.handler(
        form_post("/install", _page_fields(world, AUTH_EXPIRES="soon"), query=PAGE_QUERY), FakeContext()
    )
    assert (answer["statusCode"], answer["headers"]["X-Reason-Code"]) == (400, "auth_expires_invalid")
    assert answer["headers"]["Content-Type"].startswith("text/html")


def test_windows_1251_events_are_understood(world: World) -> None:
    fields = [(k, v) for k, v in _install_event_fields(world) if k != "data[LANGUAGE_ID]"] + [
        ("data[NOTE]", "Привет")
    ]
    event = form_post("/events", fields, charset="windows-1251", encoding="cp1251")
    assert install.handler(event, FakeContext())["statusCode"] == 200


def test_unknown_paths_are_404(world: World) -> None:
    answer = install.handler(_raw_post("/other", b"a=1"), FakeContext())
    assert answer["statusCode"] == 404


def test_a_text_body_without_base64_is_read(world: World) -> None:
    event = form_post("/events", _install_event_fields(world))
    event["body"] = base64.b64decode(event["body"]).decode()
    event["isBase64Encoded"] = False
    assert install.handler(event, FakeContext())["statusCode"] == 200


# --- leads --------------------------------------------------------------------------------------


class _Portals:
    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
        return OpenPortal(MEMBER, "ctx")


class _Lister:
    def __init__(self) -> None:
        self.rows = [{"ID": str(i), "TITLE": f"L{i}"} for i in range(1, 6)]

    def iter_list(self, portal: Any, query: ListQuery) -> Iterator[dict[str, Any]]:
        yield from (r for r in self.rows if int(r["ID"]) > query.after_id)

    iter_list_parallel = iter_list


@pytest.fixture
def leads_world(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    service = LeadsReader(_Portals(), _Lister(), CursorCodec(lambda: b"k" * 32))
    monkeypatch.setattr(wiring, "leads_reader", lambda conf: service)
    monkeypatch.setattr(wiring, "portal_policy", lambda conf: POLICY)


@pytest.mark.usefixtures("leads_world")
def test_leads_pages_through_cursors() -> None:
    first = leads.handler({"member_id": MEMBER, "limit": 3}, FakeContext())
    assert (first["count"], [r["ID"] for r in first["leads"]]) == (3, ["1", "2", "3"])
    second = leads.handler({"member_id": MEMBER, "limit": 3, "cursor": first["next_cursor"]}, FakeContext())
    assert ([r["ID"] for r in second["leads"]], second["next_cursor"]) == (["4", "5"], None)
    json.dumps(second)  # the answer is plain JSON


@pytest.mark.usefixtures("leads_world")
@pytest.mark.parametrize(
    "payload", [None, "x", [], {"member_id": MEMBER, "order": {"ID": "DESC"}}, {"domain": 1}]
)
def test_leads_invalid_requests_are_answered(payload: Any) -> None:
    answer = leads.handler(payload, FakeContext())
    assert answer["error"]["code"] == "INVALID_REQUEST"


@pytest.mark.usefixtures("leads_world")
def test_leads_unexpected_errors_are_answered_without_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def read(self, request: Any, *, deadline: float | None = None) -> Any:
            raise KeyError("access_token=secret123")

    monkeypatch.setattr(wiring, "leads_reader", lambda conf: Broken())
    context = FakeContext()
    answer = leads.handler({"member_id": MEMBER}, context)
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert context.aws_request_id in answer["error"]["message"]
    assert "secret123" not in json.dumps(answer)


# --- schedule and queues ------------------------------------------------------------------------


class _Due:
    def due_portals(self, now: float, limit: int) -> Iterator[tuple[str, int]]:
        yield from ((f"m{i}", 1) for i in range(12))


class _Sender:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def send_batch(self, bodies: list[str]) -> list[str]:
        self.batches.append(bodies)
        return []


@pytest.mark.parametrize("event", [scheduler_event(), None, "", {"source": "aws.scheduler"}])
def test_sweep_handler_takes_the_scheduler_event(
    world: World, monkeypatch: pytest.MonkeyPatch, event: Any
) -> None:
    sender = _Sender()
    monkeypatch.setattr(wiring, "refresh_sweep", lambda conf: RefreshSweep(_Due(), sender))
    answer = refresh_sweep.handler(event, FakeContext())
    assert answer == {"due": 12, "queued": 12, "failed": 0, "out_of_time": False}
    assert [len(b) for b in sender.batches] == [10, 2]


class _Coordinator:
    def refresh_if_due(
        self, member_id: str, expected_version: int, *, remaining_ms: Any = None
    ) -> RefreshOutcome:
        if member_id == "deferred":
            return RefreshOutcome.DEFERRED
        return RefreshOutcome.TRANSIENT_FAILURE if member_id == "flaky" else RefreshOutcome.REFRESHED

    def apply_rescue(self, body: Any) -> Any:
        raise ValueError("not a rescue message")


def test_worker_handler_reports_partial_failures(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        wiring,
        "refresh_worker",
        lambda conf: RefreshWorker(_Coordinator(), on_error=wiring.log_refresh_failure),
    )
    event = sqs_event([{"member_id": "ok", "version": 1}, {"member_id": "flaky", "version": 1}])
    answer = refresh_worker.handler(event, FakeContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}


def test_worker_handler_acknowledges_deferred_portals_and_counts_them(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        wiring,
        "refresh_worker",
        lambda conf: RefreshWorker(_Coordinator(), on_error=wiring.log_refresh_failure),
    )
    event = sqs_event(
        [
            {"member_id": "deferred", "version": 1},
            {"member_id": "flaky", "version": 1},
            {"member_id": "deferred", "version": 2},
        ]
    )
    capsys.readouterr()
    answer = refresh_worker.handler(event, FakeContext())
    # Deferred messages are done (their portal waits for the interval); only the flaky one comes back
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    counts = emf_counts(capsys.readouterr().out)
    assert (counts.get("RefreshDeferred"), counts.get("RefreshRetried")) == (2, 1)


def test_rescue_handler_keeps_failed_messages(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        wiring,
        "rescue_worker",
        lambda conf: RescueWorker(_Coordinator(), on_error=wiring.log_rescue_failure),
    )
    event = sqs_event(["{}"], queue="TokenRescueQueue")
    answer = token_rescue.handler(event, FakeContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def test_queue_handlers_accept_an_empty_batch(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        wiring,
        "refresh_worker",
        lambda conf: RefreshWorker(_Coordinator(), on_error=wiring.log_refresh_failure),
    )
    assert refresh_worker.handler({"Records": []}, FakeContext()) == {"batchItemFailures": []}


# --- fuzzing: arbitrary input is never a 5xx --------------------------------------------------------

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_CONTENT_TYPES = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=windows-1251",
        "application/x-www-form-urlencoded; charset=utf-16",
        "application/x-www-form-urlencoded; charset=base64",
        "multipart/form-data; boundary=x",
        "",
    ]
)
_FORM_KEYS = st.sampled_from(
    [
        "event",
        "auth[member_id]",
        "auth[application_token]",
        "auth[access_token]",
        "auth",
        "data[CLEAN]",
        "a[][b]",
        "x",
        # Issue 12 point 2: numbers and nesting that crashed handlers
        "auth[expires]",
        "auth[expires_in]",
        "auth[user_id]",
        "AUTH_EXPIRES",
        "PLACEMENT_OPTIONS",
        "auth" + "[a]" * 40,
    ]
)
_HOSTILE_VALUES = st.sampled_from(
    [
        "²",
        "٣",
        "\uff13\uff16\uff10\uff10",
        "9" * 5_000,
        "-1",
        "1e3",
        "[" * 40_000,
        '{"a":' * 3_000 + "1" + "}" * 3_000,
    ]
)
_FORM_VALUES = (
    st.sampled_from(["ONAPPINSTALL", "ONAPPUNINSTALL", "", "1", MEMBER, APP_TOKEN])
    | st.text(max_size=20)
    | _HOSTILE_VALUES
)


@_FUZZ
@given(
    body=st.binary(max_size=300), content_type=_CONTENT_TYPES, path=st.sampled_from(["/install", "/events"])
)
def test_arbitrary_bodies_never_cause_a_5xx(world: World, body: bytes, content_type: str, path: str) -> None:
    event = http_event("POST", path, headers={"content-type": content_type}, body=body, query=PAGE_QUERY)
    answer = install.handler(event, FakeContext())
    assert 400 <= answer["statusCode"] < 500
    assert world.store.writes == 0


@_FUZZ
@given(
    fields=st.lists(st.tuples(_FORM_KEYS, _FORM_VALUES), max_size=8),
    path=st.sampled_from(["/install", "/events"]),
)
def test_arbitrary_forms_never_cause_a_5xx(world: World, fields: list[tuple[str, str]], path: str) -> None:
    answer = install.handler(form_post(path, fields, query=PAGE_QUERY), FakeContext())
    assert 400 <= answer["statusCode"] < 500
    assert world.store.writes == 0


@_FUZZ
@given(query=st.text(max_size=200), cookie=st.text(max_size=60))
def test_arbitrary_callbacks_never_cause_a_5xx(world: World, query: str, cookie: str) -> None:
    event = http_event("GET", "/callback", query=query.replace("\x00", ""), cookies=[f"{COOKIE}={cookie}"])
    assert 400 <= callback.handler(event, FakeContext())["statusCode"] < 500
    assert world.store.writes == 0
    authorize_answer = authorize.handler(http_event("GET", "/authorize", query=query), FakeContext())
    assert authorize_answer["statusCode"] in {302, 400, 414}


def test_events_posted_to_the_install_url_get_json_answers_even_when_refused(world: World) -> None:
    # Bitrix24 posts ONAPPINSTALL / ONAPPUSERREADY to the install URL: an HTML error page is no answer for it.
    answer = install.handler(
        _raw_post("/install", b"event=ONAPPUSERREADY&auth%5Bmember_id%5D=m"), FakeContext()
    )
    assert answer["statusCode"] == 400
    assert answer["headers"]["Content-Type"].startswith("application/json")
    assert json.loads(answer["body"])["error"]["code"] == "data_missing"
