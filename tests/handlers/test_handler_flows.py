"""Full paths through the real handlers: moto (tables from template.yaml, KMS, Secrets Manager, SQS) and
the Bitrix24 emulator over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import requests

from b24connector import wiring
from b24connector.settings import get_settings
from bitrix24_emulator import Emulator
from tests.support.rig import COOKIE, AwsCalls, Rig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _item_version(item: dict[str, Any] | None) -> int:
    assert item is not None
    return int(item["version"]["N"])


# --- authorize -> consent -> callback ------------------------------------------------------------


def test_authorize_consent_callback_stores_working_tokens(rig: Rig, emulator: Emulator) -> None:
    # Given a user who names the emulated portal
    consent_url, nonce = rig.http.authorize()
    assert consent_url.startswith(f"{emulator.portal_url}/oauth/authorize/?client_id=local.test.app&state=")
    # When they approve on the portal and the browser follows the redirect with its cookie
    redirect = rig.http.consent(consent_url)
    assert redirect.startswith(f"{rig.api_url}/callback?")
    answer = requests.get(
        redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10
    )
    # Then the portal is connected, the cookie cleared, and only ciphertext is stored
    assert answer.status_code == 200, answer.text
    assert "Connected" in answer.text
    assert answer.headers["Set-Cookie"].startswith(f"{COOKIE}=; Max-Age=0")
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"
    assert item["domain"]["S"] == emulator.portal_domain
    assert item["client_endpoint"]["S"] == emulator.client_endpoint
    live = emulator.tokens()
    assert not any(chain["access_token"] in repr(item) for chain in live if chain.get("access_token"))
    assert emulator.stats()["token_requests"] == 1
    # And the stored tokens work: LeadsFunction reads with them
    page = rig.leads(member_id=emulator.member_id, limit=5, select=["TITLE"])
    assert page["count"] == 5, page


def test_a_replayed_callback_is_refused_and_changes_nothing(rig: Rig) -> None:
    consent_url, nonce = rig.http.authorize()
    redirect = rig.http.consent(consent_url)
    first = requests.get(redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10)
    assert first.status_code == 200
    version = _item_version(rig.portal())
    again = requests.get(redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10)
    assert (again.status_code, again.headers["X-Reason-Code"]) == (400, "state_used")
    assert _item_version(rig.portal()) == version
    # The state is kept, marked used, until DynamoDB's TTL removes it
    (state,) = rig.stack.raw_items(rig.stack.states_table)
    assert int(state["used_at"]["N"]) <= int(state["expires_at"]["N"])


def test_callback_without_the_cookie_is_refused_before_the_code_is_spent(
    rig: Rig, emulator: Emulator
) -> None:
    consent_url, nonce = rig.http.authorize()
    redirect = rig.http.consent(consent_url)
    answer = requests.get(redirect, allow_redirects=False, timeout=10)
    assert (answer.status_code, answer.headers["X-Reason-Code"]) == (400, "cookie_missing")
    assert rig.portal() is None
    assert emulator.stats()["token_requests"] == 0
    # The same browser can still finish (the state was not consumed)
    done = requests.get(redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10)
    assert done.status_code == 200


def test_an_expired_code_is_refused_and_not_retried(rig: Rig, emulator: Emulator) -> None:
    consent_url, nonce = rig.http.authorize()
    redirect = rig.http.consent(consent_url)
    emulator.clock.advance(31)  # codes live 30 s
    answer = requests.get(
        redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10
    )
    assert (answer.status_code, answer.headers["X-Reason-Code"]) == (400, "code_rejected")
    assert emulator.stats()["token_requests"] == 1
    assert rig.portal() is None


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({}, "domain_missing"),
        ({"domain": "evil.example.com"}, "domain_invalid"),
        ({"domain": "127.0.0.2:1"}, "domain_invalid"),
    ],
)
def test_authorize_refuses_bad_domains_and_stores_nothing(
    rig: Rig, query: dict[str, str], reason: str
) -> None:
    answer = requests.get(f"{rig.api_url}/authorize", params=query, allow_redirects=False, timeout=10)
    assert (answer.status_code, answer.headers["X-Reason-Code"]) == (400, reason)
    assert "Set-Cookie" not in answer.headers
    assert rig.stack.raw_items(rig.stack.states_table) == []


def test_authorize_refuses_duplicate_domains(rig: Rig, emulator: Emulator) -> None:
    url = f"{rig.api_url}/authorize?domain={emulator.portal_domain}&domain=other.bitrix24.com"
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert (answer.status_code, answer.headers["X-Reason-Code"]) == (400, "domain_duplicate")
    assert rig.stack.raw_items(rig.stack.states_table) == []


def test_states_are_stored_hashed_with_an_expiry(rig: Rig) -> None:
    consent_url, nonce = rig.http.authorize()
    (item,) = rig.stack.raw_items(rig.stack.states_table)
    assert nonce not in repr(item)
    assert consent_url.split("state=", 1)[1].split("&", 1)[0] not in repr(item)
    assert int(item["expires_at"]["N"]) > 0


# --- install page, ONAPPINSTALL, uninstall -------------------------------------------------------


def _api_only(rig: Rig, emulator: Emulator) -> None:
    """The app card of an API-only app: the events URL is its installation event handler."""
    emulator.configure(app_mode="api_only", install_url=rig.http.events_url())


def _delivery(answer: dict[str, Any], event: str) -> dict[str, Any]:
    (delivery,) = [d for d in answer["deliveries"] if d["event"] == event]
    return delivery


def test_api_only_install_is_journaled_applied_and_subscribed_then_uninstalled_through_the_binding(
    rig: Rig, emulator: Emulator
) -> None:
    # Given an API-only app whose administrator installs it
    _api_only(rig, emulator)
    installed = emulator.install(user_id=1)
    # Then ONAPPINSTALL was answered at once, before anything was verified or stored
    assert _delivery(installed, "ONAPPINSTALL")["status"] == 200
    assert rig.portal() is None
    assert emulator.stats()["oauth_app_info_requests"] == 0
    # When LifecycleFunction runs: the grant is verified, stored as the administrator's, and subscribed
    rig.drain_lifecycle()
    item = rig.portal()
    assert item is not None
    assert (item["health"]["S"], item["grant_role"]["S"], item["subscription_state"]["S"]) == (
        "active",
        "admin",
        "bound",
    )
    # ONAPPUNINSTALL and the default LEAD_EVENTS (the record keeps them sorted)
    assert item["subscribed_events"]["L"] == [
        {"S": e} for e in ("ONAPPUNINSTALL", "ONCRMLEADADD", "ONCRMLEADDELETE", "ONCRMLEADUPDATE")
    ]
    assert (
        item["application_token_hash"]["S"] == hashlib.sha256(emulator.application_token.encode()).hexdigest()
    )
    assert emulator.application_token not in repr(item)
    bindings = emulator.events()["bindings"]
    assert [(b["event"], b["handler"]) for b in bindings] == [
        (e, rig.http.events_url())
        for e in ("ONAPPUNINSTALL", "ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADDELETE")
    ]
    # When the administrator removes the app, Bitrix24 delivers ONAPPUNINSTALL through the binding
    removed = emulator.uninstall(clean=False)
    # Then it is accepted for confirmation (a token alone proves nothing: employees can read it) ...
    assert _delivery(removed, "ONAPPUNINSTALL")["status"] == 202
    assert rig.portal()["health"]["S"] == "active"  # type: ignore[index]
    # ... and applied once Bitrix24, asked with the stored grant, says the app is gone
    rig.drain_lifecycle()
    item = rig.portal()
    assert item is not None
    assert (item["health"]["S"], "token_ciphertext" in item) == ("uninstalled", False)
    assert rig.leads(member_id=emulator.member_id)["error"]["code"] == "REAUTH_REQUIRED"


def test_legacy_install_page_then_uninstall_confirmed_with_bitrix24(rig: Rig, emulator: Emulator) -> None:
    # Given a UI app on a portal whose install page carries no application token (the legacy form)
    emulator.install(user_id=1)
    page = emulator.send_install(rig.http.install_url(), "page")
    assert page["status"] == 200, page
    assert "BX24.installFinish()" in page["body"]
    emulator.install_finish()
    item = rig.portal()
    assert item is not None
    assert item["server_endpoint"]["S"] == f"{emulator.oauth_url}/rest/"
    assert "application_token_hash" not in item
    # And the connector subscribed to ONAPPUNINSTALL
    rig.drain_lifecycle()
    assert rig.portal()["subscription_state"]["S"] == "bound"  # type: ignore[index]
    # When the administrator removes the app, with "keep data"
    removed = emulator.uninstall(clean=False)
    # Then nothing proves the event by token: accepted, nothing changed yet
    assert _delivery(removed, "ONAPPUNINSTALL")["status"] == 202
    assert rig.portal()["health"]["S"] == "active"  # type: ignore[index]
    # And once Bitrix24, asked with the stored grant, says the app is gone, the uninstall is applied
    rig.drain_lifecycle()
    item = rig.portal()
    assert item is not None
    assert (item["health"]["S"], "token_ciphertext" in item, item["domain"]["S"]) == (
        "uninstalled",
        False,
        emulator.portal_domain,
    )


def test_replayed_install_event_keeps_the_version(rig: Rig, emulator: Emulator) -> None:
    from bitrix24_emulator.installer import deliver, install_event_request

    request = install_event_request(emulator.state, rig.http.events_url())
    assert deliver(request, 10)["status"] == 200
    rig.drain_lifecycle()
    version = _item_version(rig.portal())
    assert deliver(request, 10)["status"] == 200
    rig.drain_lifecycle()
    assert _item_version(rig.portal()) == version


def test_a_late_install_event_and_a_first_app_info_timeout_lose_nothing(rig: Rig, emulator: Emulator) -> None:
    # Given an ONAPPINSTALL whose access token expired before LifecycleFunction got to it
    _api_only(rig, emulator)
    emulator.install(user_id=1)
    emulator.expire_access_tokens()
    # And an OAuth server whose first app.info answer times out
    emulator.add_faults([{"target": "oauth", "method": "app.info", "kind": "slow", "delay": 6, "count": 1}])
    # When the journal is drained (a failed try comes back, as SQS redelivers it)
    drain = rig.drain_lifecycle()
    # Then the install is stored all the same, after one renewal of the event's own refresh token
    assert drain.retried >= 1
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"
    assert emulator.stats()["token_grants"].get("refresh_token") == 1
    assert rig.leads(member_id=emulator.member_id, limit=1)["count"] == 1


def test_an_employee_cannot_take_the_portal_over_by_authorize(rig: Rig, emulator: Emulator) -> None:
    # Given a portal connected by its administrator
    assert rig.http.connect().status_code == 200
    before = rig.portal()
    # When an employee who is not an administrator completes /authorize
    answer = rig.http.connect(user_id=2)
    # Then a clear page, and the administrator's grant still serves every reader
    assert (answer.status_code, answer.headers["X-Reason-Code"]) == (403, "administrator_required")
    assert rig.portal() == before
    emulator.reset()
    assert rig.leads(member_id=emulator.member_id, limit=3)["count"] == 3
    assert set(emulator.stats()["requests_by_user"]) == {"1"}


def test_uninstall_of_an_unknown_portal_is_403(rig: Rig) -> None:
    answer = rig.http.post_form(
        "/events",
        [("event", "ONAPPUNINSTALL"), ("auth[member_id]", "f" * 32), ("auth[application_token]", "a" * 32)],
    )
    assert answer.status_code == 403
    assert rig.portal() is None


def test_install_with_a_token_the_oauth_server_does_not_know_stores_nothing(
    rig: Rig, emulator: Emulator
) -> None:
    fields = [
        ("event", "ONAPPINSTALL"),
        ("auth[access_token]", "x" * 32),
        ("auth[refresh_token]", "y" * 32),
        ("auth[expires_in]", "3600"),
        ("auth[domain]", emulator.portal_domain),
        ("auth[server_endpoint]", f"{emulator.oauth_url}/rest/"),
        ("auth[client_endpoint]", emulator.client_endpoint),
        ("auth[member_id]", emulator.member_id),
        ("auth[application_token]", "z" * 32),
    ]
    answer = rig.http.post_form("/events", fields)
    assert answer.status_code == 200  # accepted into the journal; verified there
    rig.drain_lifecycle()
    assert rig.portal() is None


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "application/json"}, b'{"event": "ONAPPINSTALL"}', 415),
        ({"Content-Type": "text/plain"}, b"event=ONAPPINSTALL", 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"event=%C3%28", 400),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"event=ONAPPINSTALL", 400),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"auth[member_id]=" + b"x" * 300_000, 413),
        (
            {"Content-Type": "application/x-www-form-urlencoded; charset=x-unknown"},
            b"event=ONAPPINSTALL",
            415,
        ),
    ],
)
@pytest.mark.parametrize("path", ["/install", "/events"])
def test_bad_posts_are_4xx_and_change_nothing(
    rig: Rig, path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    emulator = rig.emulator
    answer = requests.post(
        f"{rig.api_url}{path}?DOMAIN={emulator.portal_domain}", data=body, headers=headers, timeout=10
    )
    assert answer.status_code == status, answer.text
    assert "Traceback" not in answer.text
    assert rig.portal() is None
    assert emulator.stats()["oauth_app_info_requests"] == 0


# --- LeadsFunction -------------------------------------------------------------------------------


def _install(rig: Rig, emulator: Emulator) -> None:
    rig.http.install_event()


def test_leads_pages_every_lead_through_cursors(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        payload: dict[str, Any] = {"domain": emulator.portal_domain, "select": ["ID", "TITLE"], "limit": 70}
        if cursor:
            payload["cursor"] = cursor
        page = rig.leads(**payload)
        assert "error" not in page, page
        assert page["count"] == len(page["leads"])
        seen.extend(int(lead["ID"]) for lead in page["leads"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(emulator.state.leads.ids())
    assert pages == -(-len(seen) // 70)  # ceil: the extra row read per page avoids a trailing empty page
    assert emulator.stats()["count_queries"] == 0  # start=-1 everywhere


def test_leads_filter_and_large_limits(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    ids = sorted(emulator.state.leads.ids())
    middle = ids[len(ids) // 2]
    page = rig.leads(member_id=emulator.member_id, filter={">=ID": middle}, select=["TITLE"], limit=5000)
    assert [int(lead["ID"]) for lead in page["leads"]] == [i for i in ids if i >= middle]
    assert page["next_cursor"] is None


@pytest.mark.parametrize("emulator_config", [{"leads": 12_000, "seed": 7}])
def test_split_parts_cover_every_lead_once(rig: Rig, emulator: Emulator) -> None:
    # Given a portal with 12,000 leads
    _install(rig, emulator)
    ids = sorted(emulator.state.leads.ids())
    # When the first page asks for three parts
    first = rig.leads(member_id=emulator.member_id, select=["TITLE"], limit=20_000, split=3)
    assert "error" not in first, first
    parts = first["split_cursors"]
    # Then it answers one batch, read in one REST request, and three signed parts
    assert first["count"] == 2_450
    assert len(parts) == 3
    assert emulator.stats()["requests"] == 1
    # And the parts, each followed on its own, hold every other lead exactly once, without COUNT pages
    seen = [int(lead["ID"]) for lead in first["leads"]]
    for part in parts:
        cursor = part
        while cursor is not None:
            page = rig.leads(member_id=emulator.member_id, select=["TITLE"], limit=20_000, cursor=cursor)
            assert "error" not in page, page
            seen.extend(int(lead["ID"]) for lead in page["leads"])
            cursor = page["next_cursor"]
    assert seen == ids
    stats = emulator.stats()
    assert stats["count_queries"] == 0
    assert stats["requests"] <= -(-len(ids) // 2_450) + len(parts)
    # A part's upper bound is inside the signature: widening it is refused
    body, _, mac = parts[0].partition(".")
    decoded = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    decoded["b"] = ids[-1] + 1
    widened = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    answer = rig.leads(member_id=emulator.member_id, select=["TITLE"], cursor=f"{widened}.{mac}")
    assert answer["error"]["code"] == "INVALID_REQUEST"


def test_tampered_and_foreign_cursors_are_rejected(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    first = rig.leads(member_id=emulator.member_id, limit=10)
    cursor = first["next_cursor"]
    body, _, mac = cursor.partition(".")
    decoded = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    decoded["a"] = 0
    forged_body = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    for bad in (f"{forged_body}.{mac}", cursor[:-3] + "AAA", "garbage"):
        answer = rig.leads(member_id=emulator.member_id, limit=10, cursor=bad)
        assert answer["error"]["code"] == "INVALID_REQUEST"
    other_filter = rig.leads(
        member_id=emulator.member_id, limit=10, cursor=cursor, filter={"STATUS_ID": "NEW"}
    )
    assert other_filter["error"]["code"] == "INVALID_REQUEST"


def test_expired_token_is_refreshed_transparently_once(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    rig.leads(member_id=emulator.member_id, limit=5)  # warm: tokens decrypted and cached
    emulator.reset()
    emulator.expire_access_tokens()
    page = rig.leads(member_id=emulator.member_id, limit=5)
    assert page["count"] == 5, page
    assert emulator.stats()["token_requests"] == 1
    # The new pair was committed and cached: the next call uses it without another refresh
    again = rig.leads(member_id=emulator.member_id, limit=5)
    assert again["count"] == 5
    assert emulator.stats()["token_requests"] == 1


def test_a_portal_rejecting_every_token_gets_one_refresh_per_interval(rig: Rig, emulator: Emulator) -> None:
    # Given a portal that answers expired_token to every REST call, even with a pair just issued
    _install(rig, emulator)
    emulator.add_faults([{"target": "rest", "kind": "expired_token", "count": 1000}])
    # When ten lead reads come in
    answers = [rig.leads(member_id=emulator.member_id, limit=5) for _ in range(10)]
    # Then the token endpoint saw one refresh (Bitrix24 blocks apps that refresh too often), and every
    # read after it got a clear, retryable RATE_LIMITED answer instead of another refresh
    assert emulator.stats()["token_requests"] == 1
    assert all("error" in answer for answer in answers), answers
    assert [answer["error"]["code"] for answer in answers[1:]] == ["RATE_LIMITED"] * 9
    assert "retry in" in answers[1]["error"]["message"]
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"  # nothing was flagged: the grant itself is fine


def test_warm_invocation_makes_one_dynamodb_read_and_no_kms_or_secrets_calls(
    rig: Rig, emulator: Emulator, aws_calls: AwsCalls
) -> None:
    _install(rig, emulator)
    rig.leads(member_id=emulator.member_id, limit=5)  # cold: decrypt + secret
    first = rig.leads(member_id=emulator.member_id, limit=5)
    aws_calls.clear()
    rig.leads(member_id=emulator.member_id, limit=5, cursor=first["next_cursor"])
    stack = rig.stack
    assert aws_calls.dynamodb_on(stack.portals_table) == ["GetItem"]
    # The shared pacer writes (never reads) its bucket: at most one lease per invocation here
    assert set(aws_calls.dynamodb_on(stack.rate_limit_table)) <= {"UpdateItem"}
    assert len(aws_calls.of("dynamodb")) - 1 == len(aws_calls.dynamodb_on(stack.rate_limit_table)) <= 1
    assert aws_calls.of("kms") == []
    assert aws_calls.of("secretsmanager") == []
    aws_calls.clear()
    rig.leads(domain=emulator.portal_domain, limit=5)
    assert aws_calls.dynamodb_on(stack.portals_table) == ["Query"]
    assert aws_calls.of("kms") == []
    assert aws_calls.of("secretsmanager") == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"member_id": "f" * 32}, "PORTAL_NOT_FOUND"),
        ({"domain": "nobody.bitrix24.com"}, "PORTAL_NOT_FOUND"),
        ({"domain": "evil.example.com"}, "INVALID_REQUEST"),  # not on the allow-list
        ({"member_id": "m", "limit": 0}, "INVALID_REQUEST"),
        ({"member_id": "m", "order": {"DATE_CREATE": "DESC"}}, "INVALID_REQUEST"),
        ({"member_id": "m", "extra": True}, "INVALID_REQUEST"),
    ],
)
def test_leads_errors(rig: Rig, emulator: Emulator, payload: dict[str, Any], code: str) -> None:
    _install(rig, emulator)
    assert rig.invoke("LeadsFunction", payload)["error"]["code"] == code


def test_dead_grant_is_reauth_required(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    emulator.expire_access_tokens()
    emulator.invalidate_refresh_tokens()
    answer = rig.leads(member_id=emulator.member_id, limit=5)
    assert answer["error"]["code"] == "REAUTH_REQUIRED"
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "needs_reauth"


def test_rate_limit_exhaustion_is_rate_limited(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    emulator.add_faults([{"target": "rest", "kind": "query_limit", "count": 50}])
    answer = rig.invoke("LeadsFunction", {"member_id": emulator.member_id, "limit": 5}, remaining_ms=5_000)
    assert answer["error"]["code"] == "RATE_LIMITED", answer


# --- scheduled refresh ---------------------------------------------------------------------------


def test_sweep_and_worker_refresh_a_due_portal_once_and_not_again_within_a_day(
    rig: Rig, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(rig, emulator)
    version = _item_version(rig.portal())
    # Nothing is due right after install
    assert rig.sweep()["due"] == 0
    # Given the refresh token is 22 days old (REFRESH_AFTER_DAYS is 21)
    _age_portal(rig, days=22)
    report = rig.sweep()
    assert (report["due"], report["queued"]) == (1, 1)
    sqs = rig.stack.client("sqs")
    messages = sqs.receive_message(QueueUrl=rig.stack.refresh_queue_url, MaxNumberOfMessages=10)["Messages"]
    assert json.loads(messages[0]["Body"]) == {"member_id": emulator.member_id, "version": version}
    event = _sqs_event(messages)
    emulator.reset()
    # When the worker runs the message
    assert rig.invoke("RefreshWorkerFunction", event) == {"batchItemFailures": []}
    # Then one refresh happened and the version moved
    assert emulator.stats()["token_requests"] == 1
    assert _item_version(rig.portal()) == version + 1
    # And a redelivery, or a new sweep within 24 h, refreshes nothing
    assert rig.invoke("RefreshWorkerFunction", event) == {"batchItemFailures": []}
    # Even when the index says due again (clock moved back) the attempt a moment ago blocks it
    _age_portal(rig, days=22, keep_recent_attempt=True)
    assert rig.sweep()["due"] == 1
    for message in sqs.receive_message(QueueUrl=rig.stack.refresh_queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        rig.invoke("RefreshWorkerFunction", _sqs_event([message]))
    assert emulator.stats()["token_requests"] == 1


def test_one_scheduled_refresh_makes_four_aws_calls(
    rig: Rig, emulator: Emulator, aws_calls: AwsCalls
) -> None:
    _install(rig, emulator)
    version = _item_version(rig.portal())
    _age_portal(rig, days=22)
    message = {"MessageId": "m-1", "ReceiptHandle": "r-1", "MD5OfBody": "0" * 32}
    body = json.dumps({"member_id": emulator.member_id, "version": version})
    # A worker that has not seen this pair: the refresh token must be decrypted (KMS Decrypt).
    wiring.reset()  # a cold container: nothing built, no decrypted pair cached
    aws_calls.clear()
    assert rig.invoke("RefreshWorkerFunction", _sqs_event([{**message, "Body": body}])) == {
        "batchItemFailures": []
    }
    refresh_calls = [call for call in aws_calls.calls if call[0] != "secretsmanager"]
    portal_calls = aws_calls.dynamodb_on(rig.stack.portals_table)
    assert _item_version(rig.portal()) == version + 1
    # lease (one conditional UpdateItem, no GetItem), decrypt the refresh token, a data key for the new
    # pair (before the token call: sealing after it is local), commit; the client secret read is
    # Powertools-cached per container, not per refresh
    assert refresh_calls == [
        ("dynamodb", "UpdateItem"),
        ("kms", "Decrypt"),
        ("kms", "GenerateDataKey"),
        ("dynamodb", "UpdateItem"),
    ]
    assert portal_calls == ["UpdateItem", "UpdateItem"]


def _age_portal(rig: Rig, *, days: int, keep_recent_attempt: bool = False) -> None:
    """Move the portal's refresh clock back (test setup writes the item directly)."""
    dynamodb = rig.stack.client("dynamodb")
    item = rig.portal()
    assert item is not None
    past = int(float(item["refresh_obtained_at"]["N"])) - days * 86_400
    names = {"#o": "refresh_obtained_at", "#d": "refresh_due_at"}
    values = {":o": {"N": str(past)}, ":d": {"N": str(past + 21 * 86_400)}}
    expression = "SET #o = :o, #d = :d"
    if not keep_recent_attempt:
        names["#a"] = "last_refresh_attempt_at"
        expression += " REMOVE #a"
    dynamodb.update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": item["member_id"]},
        UpdateExpression=expression,
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def _sqs_event(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-central-1:123456789012:refresh",
                "awsRegion": "eu-central-1",
            }
            for m in messages
        ]
    }


def test_services_are_built_once_per_settings(rig: Rig) -> None:
    conf = get_settings()
    assert wiring.oauth_client(conf) is wiring.oauth_client(conf)
    assert wiring.coordinator(conf) is wiring.coordinator(conf)


# --- AWS calls per invocation ----------------------------------------------------------------------


def test_aws_calls_per_invocation(rig: Rig, emulator: Emulator, aws_calls: AwsCalls) -> None:
    def calls() -> list[tuple[str, str]]:
        taken = sorted(aws_calls.calls)
        aws_calls.clear()
        return taken

    aws_calls.clear()
    consent_url, nonce = rig.http.authorize()
    assert calls() == [("dynamodb", "PutItem")]
    redirect = rig.http.consent(consent_url)
    requests.get(redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10)
    # consume the state, read + conditionally write the portal, seal the pair, read the client secret,
    # queue the portal's event.bind check
    assert aws_calls.dynamodb_on(rig.stack.states_table) == ["UpdateItem"]
    assert calls() == [
        ("dynamodb", "GetItem"),
        ("dynamodb", "PutItem"),
        ("dynamodb", "UpdateItem"),
        ("kms", "GenerateDataKey"),
        ("secretsmanager", "GetSecretValue"),
        ("sqs", "SendMessage"),
    ]
    # a replay: the conditional update is refused, one read says why; nothing else is touched
    requests.get(redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10)
    assert aws_calls.dynamodb_on(rig.stack.states_table) == ["UpdateItem", "GetItem"]
    assert calls() == [("dynamodb", "GetItem"), ("dynamodb", "UpdateItem")]
    # ONAPPINSTALL: sealed and journaled, nothing else before the answer
    assert emulator.send_install(rig.http.events_url(), "event")["status"] == 200
    assert calls() == [("kms", "GenerateDataKey"), ("sqs", "SendMessage")]
    rig.drain_lifecycle()
    aws_calls.clear()
    # an uninstall: one read, then journaled (the token sealed) for Bitrix24 to confirm
    assert emulator.send_uninstall(rig.http.events_url(), application_token="0" * 32)["status"] == 202
    assert calls() == [("dynamodb", "GetItem"), ("kms", "GenerateDataKey"), ("sqs", "SendMessage")]
    rig.sweep()
    assert calls() == [("dynamodb", "Query")] * 16  # one query per due-index shard, nothing to queue


@pytest.mark.parametrize(
    ("drop", "extra", "reason"),
    [
        ("code", "", "code_missing"),
        ("state", "", "state_missing"),
        ("domain", "", "domain_missing"),
        ("member_id", "", "member_id_missing"),
        ("", "&state=other", "state_duplicate"),
        ("", "&code=%FF", "query_invalid_encoding"),
    ],
)
def test_callback_bad_input_is_4xx_and_spends_nothing(
    rig: Rig, emulator: Emulator, drop: str, extra: str, reason: str
) -> None:
    consent_url, nonce = rig.http.authorize()
    redirect = rig.http.consent(consent_url)
    base, _, query = redirect.partition("?")
    kept = "&".join(part for part in query.split("&") if not drop or not part.startswith(f"{drop}="))
    answer = requests.get(
        f"{base}?{kept}{extra}", headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10
    )
    assert (answer.status_code, answer.headers["X-Reason-Code"]) == (400, reason)
    assert emulator.stats()["token_requests"] == 0
    assert rig.portal() is None
    assert len(rig.stack.raw_items(rig.stack.states_table)) == 1


@pytest.mark.parametrize("emulator_config", [{"leads": 6000, "seed": 11}])
def test_large_pages_read_id_windows_in_parallel(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    emulator.reset()
    page = rig.leads(member_id=emulator.member_id, select=["ID", "TITLE"], limit=20_000)
    assert [int(lead["ID"]) for lead in page["leads"]] == sorted(emulator.state.leads.ids())
    assert page["next_cursor"] is None
    stats = emulator.stats()
    assert stats["count_queries"] == 0
    # ~5,400 live leads in batches of 2,500 rows, plus the one max-ID probe
    assert stats["batch_requests"] <= 5


def test_a_page_can_end_mid_window_and_continue(rig: Rig, emulator: Emulator) -> None:
    _install(rig, emulator)
    first = rig.leads(member_id=emulator.member_id, select=["TITLE"], limit=123)
    second = rig.leads(
        member_id=emulator.member_id, select=["TITLE"], limit=20_000, cursor=first["next_cursor"]
    )
    ids = [int(lead["ID"]) for lead in first["leads"] + second["leads"]]
    assert ids == sorted(emulator.state.leads.ids())
    assert second["next_cursor"] is None


def test_onappuserready_makes_the_system_user_the_grant_over_an_employees(
    rig: Rig, emulator: Emulator
) -> None:
    # Given a portal an employee connected first (nobody held it)
    assert rig.http.connect(user_id=2).status_code == 200
    rig.drain_lifecycle()
    item = rig.portal()
    assert item is not None
    assert (item["grant_role"]["S"], item["user_id"]["N"]) == ("user", "2")
    # When the Market app is installed by an administrator: ONAPPINSTALL, then ONAPPUSERREADY on the install URL
    emulator.configure(app_mode="api_only", market_app=True, install_url=rig.http.install_url())
    installed = emulator.install(user_id=1)
    assert [d["status"] for d in installed["deliveries"]] == [200, 200]
    assert [d["event"] for d in installed["deliveries"]] == ["ONAPPINSTALL", "ONAPPUSERREADY"]
    rig.drain_lifecycle()
    # Then the system user's long-lived pair is the portal's grant, with the application token
    item = rig.portal()
    assert item is not None
    system_user = str(emulator.config.system_user_id)
    assert (item["grant_role"]["S"], item["user_id"]["N"], item["health"]["S"]) == (
        "system",
        system_user,
        "active",
    )
    assert "application_token_hash" in item
    # And LeadsFunction reads as the system user from now on
    emulator.reset()
    assert rig.leads(member_id=emulator.member_id, limit=2)["count"] == 2
    assert set(emulator.stats()["requests_by_user"]) == {system_user}
    # And an administrator's later /authorize does not displace it
    assert rig.http.connect().status_code == 403
    assert rig.portal()["grant_role"]["S"] == "system"  # type: ignore[index]


def test_an_uninstall_check_that_renews_the_stored_grant_rescues_a_pair_whose_commit_fails(
    rig: Rig, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an installed portal whose stored access token has expired (the usual case: they live an hour)
    rig.http.install_event()
    emulator.expire_access_tokens()
    before = rig.portal()
    assert before is not None
    # And DynamoDB refusing the commit of the renewed pair
    from b24connector.vault.errors import VaultUnavailable
    from b24connector.vault.store import PortalStore

    def commit_fails(*_: Any, **__: Any) -> Any:
        raise VaultUnavailable("DynamoDB UpdateItem failed (ProvisionedThroughputExceededException)")

    monkeypatch.setattr(PortalStore, "commit_refresh", commit_fails)
    # When an unproven uninstall is checked with Bitrix24 through the stored grant
    assert emulator.send_uninstall(rig.http.events_url(), application_token="0" * 32)["status"] == 202
    rig.drain_lifecycle(rounds=1)
    # Then the renewed pair went to the rescue queue (the old refresh token is spent), and the uninstall
    # was refused: app.info with the renewed token says the app is installed
    rescued = rig.stack.client("sqs").receive_message(QueueUrl=rig.stack.rescue_queue_url)
    assert len(rescued.get("Messages", [])) == 1
    assert emulator.stats()["token_grants"] == {"refresh_token": 1}
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"
