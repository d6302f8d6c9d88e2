"""An ordinary employee of a customer's portal attacks the app lifecycle with what the portal hands them.

Emulator users: 1 is the portal administrator who installed the app, 2 and 3 are employees. Whoever
opens the app gets their own AUTH_ID/REFRESH_ID in the app frame (`issue_tokens(user_id=2)` stands for
that); the employee knows the connector's public URLs. Every attack runs through the real handlers,
the journal (LifecycleQueue on moto) drained by LifecycleFunction, and the emulator's OAuth server and
REST API, and each proves the administrator's grant, application token and data survive.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from b24connector.vault.hashing import hash_secret
from bitrix24_emulator.installer import install_page_request, user_ready_fields
from tests.leak_canary import canary_value, find_canaries
from tests.support.rig import Rig, header, query_of

ADMIN, EMPLOYEE, OTHER_EMPLOYEE = 1, 2, 3
SYSTEM_USER = 512  # the emulator's app system user (EmulatorConfig.system_user_id)
# What an unproven uninstall touches: the time of the portal's last check with Bitrix24 (the throttle).
CHECK_FIELDS = {"uninstall_check_at"}
Fields = list[tuple[str, str]]


def _without(items: list[dict[str, Any]], fields: set[str]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k not in fields} for item in items]


def _install_event_fields(rig: Rig, pair: dict[str, Any], application_token: str) -> Fields:
    """ONAPPINSTALL as Bitrix24 posts it (docs/bitrix24-facts.md#f-app-8), around a given pair."""
    emulator = rig.emulator
    return [
        ("event", "ONAPPINSTALL"),
        ("data[VERSION]", "1"),
        ("data[ACTIVE]", "Y"),
        ("data[INSTALLED]", "Y"),
        ("data[LANGUAGE_ID]", "en"),
        ("ts", str(pair["expires"] - pair["expires_in"])),
        ("auth[access_token]", pair["access_token"]),
        ("auth[expires]", str(pair["expires"])),
        ("auth[expires_in]", str(pair["expires_in"])),
        ("auth[scope]", pair["scope"]),
        ("auth[domain]", emulator.portal_domain),
        ("auth[server_endpoint]", pair["server_endpoint"]),
        ("auth[status]", pair["status"]),
        ("auth[client_endpoint]", pair["client_endpoint"]),
        ("auth[member_id]", pair["member_id"]),
        ("auth[user_id]", str(pair["user_id"])),
        ("auth[refresh_token]", pair["refresh_token"]),
        ("auth[application_token]", application_token),
    ]


def _uninstall_fields(rig: Rig, application_token: str, *, clean: bool = True) -> Fields:
    return rig.uninstall_fields(clean=clean, application_token=application_token)


def _user_ready(rig: Rig, system_user: int, installer: int, application_token: str | None = None) -> Fields:
    """ONAPPUSERREADY (docs/bitrix24-facts.md#f-app-9): `data` the "system" pair, `auth` the installer's."""
    state = rig.emulator.state
    system, _ = state.issue_tokens("system_user", system_user)
    by, _ = state.issue_tokens("install_user_ready", installer)
    fields = user_ready_fields(state, system, by)
    if application_token is None:
        return fields
    return [(k, application_token if k == "auth[application_token]" else v) for k, v in fields]


@pytest.fixture
def admin_rig(rig: Rig) -> Rig:
    """The administrator installed the app (ONAPPINSTALL, user 1); the grant is subscribed to uninstalls."""
    answer, _fields = rig.install_event(user_id=ADMIN)
    assert answer["statusCode"] == 200
    item = rig.portal()
    assert item is not None
    assert (item["grant_role"]["S"], item["subscription_state"]["S"]) == ("admin", "bound")
    assert item["application_token_hash"]["S"] == hash_secret(rig.emulator.application_token)
    return rig


# --- (1) the employee's own pair posted as ONAPPINSTALL, then their own ONAPPUNINSTALL ----------------


def test_an_employees_forged_install_and_uninstall_change_nothing_and_the_genuine_uninstall_works(
    admin_rig: Rig,
) -> None:
    rig = admin_rig
    before = rig.items()
    # Given an employee's own pair from the app frame and an application token of their choice
    employee_pair = rig.emulator.issue_tokens(user_id=EMPLOYEE)
    chosen = canary_value("apptoken")
    # When they post it as ONAPPINSTALL: app.info truthfully confirms app, portal and endpoint
    answer = rig.post_form("/events", _install_event_fields(rig, employee_pair, chosen))
    assert (answer["statusCode"], answer["body"]) == (200, '{"status":"accepted"}')
    drained = rig.drain_lifecycle()
    # Then the employee's pair does not outrank the administrator's: refused, nothing stored
    assert drained.of("grant") == ["refused"]
    assert rig.items() == before
    # When they send ONAPPUNINSTALL with CLEAN=1 and their token
    rig.emulator.reset()
    answer = rig.post_form("/events", _uninstall_fields(rig, chosen, clean=True))
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (202, None)
    drained = rig.drain_lifecycle()
    # Then Bitrix24, asked with the administrator's grant, says the app is installed: nothing changes
    assert drained.of("uninstall") == ["refused:uninstall_not_confirmed"]
    assert rig.emulator.stats()["oauth_app_info_requests"] == 1
    assert _without(rig.items(), CHECK_FIELDS) == _without(before, CHECK_FIELDS)
    assert rig.leads({"member_id": rig.emulator.member_id, "limit": 2})["count"] == 2
    # And when the administrator removes the app, the subscription delivers the genuine event: accepted,
    # then applied once Bitrix24 confirms it (the application token alone never proves an uninstall)
    removed = rig.emulator.uninstall(clean=True)
    (delivery,) = removed["deliveries"]
    assert (delivery["handler"], delivery["status"]) == (f"{rig.api_url}/events", 202)
    _next_minute(rig)
    assert rig.drain_lifecycle().of("uninstall") == ["uninstalled"]
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "uninstalled"
    assert {"token_ciphertext", "domain", "application_token_hash", "grant_role"}.isdisjoint(item)


def test_on_a_legacy_install_page_portal_the_employees_forgeries_change_nothing_and_the_uninstall_works(
    rig: Rig,
) -> None:
    # Given a UI app the administrator installed through the legacy install page: no application token
    page, _fields, _query = rig.install_page(user_id=ADMIN, legacy=True)
    rig.emulator.install_finish()
    assert page["statusCode"] == 200
    assert rig.drain_lifecycle().of("subscribe") == ["subscription_bound"]
    item = rig.portal()
    assert item is not None
    assert (item["grant_role"]["S"], "application_token_hash" in item) == ("admin", False)
    before = rig.items()
    # When an employee posts their own pair as ONAPPINSTALL, then ONAPPUNINSTALL with CLEAN=1
    chosen = canary_value("apptoken")
    employee_pair = rig.emulator.issue_tokens(user_id=EMPLOYEE)
    assert rig.post_form("/events", _install_event_fields(rig, employee_pair, chosen))["statusCode"] == 200
    assert rig.drain_lifecycle().of("grant") == ["refused"]
    assert rig.post_form("/events", _uninstall_fields(rig, chosen, clean=True))["statusCode"] == 202
    assert rig.drain_lifecycle().of("uninstall") == ["refused:uninstall_not_confirmed"]
    # Then nothing changed: no stored token to match, and Bitrix24 says the app is installed
    assert _without(rig.items(), CHECK_FIELDS) == _without(before, CHECK_FIELDS)
    # And the administrator's genuine uninstall ("keep data"), delivered through the subscription, is
    # confirmed with Bitrix24 once the check slot the forgery used is a minute old
    removed = rig.emulator.uninstall(clean=False)
    assert [d["status"] for d in removed["deliveries"]] == [202]
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": {"S": rig.emulator.member_id}},
        UpdateExpression="SET uninstall_check_at = uninstall_check_at - :minute",
        ExpressionAttributeValues={":minute": {"N": "61"}},
    )
    assert rig.drain_lifecycle().of("uninstall") == ["uninstalled"]
    item = rig.portal()
    assert item is not None
    # The administrator's choice holds: uninstalled, tokens gone, the portal's record kept (not CLEAN)
    assert (item["health"]["S"], "token_ciphertext" in item, item["domain"]["S"]) == (
        "uninstalled",
        False,
        rig.emulator.portal_domain,
    )


def test_an_employees_install_on_an_unclaimed_portal_never_stores_their_application_token(
    rig: Rig,
) -> None:
    # Given a portal the connector holds no grant for, and an employee's forged ONAPPINSTALL
    employee_pair = rig.emulator.issue_tokens(user_id=EMPLOYEE)
    chosen = canary_value("apptoken")
    assert rig.post_form("/events", _install_event_fields(rig, employee_pair, chosen))["statusCode"] == 200
    # Then their pair is stored as an ordinary user's grant, without the token they chose
    assert rig.drain_lifecycle().of("grant") == ["stored"]
    item = rig.portal()
    assert item is not None
    assert item["grant_role"]["S"] == "user"
    assert "application_token_hash" not in item
    # So their token authenticates nothing: their uninstall waits for Bitrix24, which says installed
    before = rig.items()
    assert rig.post_form("/events", _uninstall_fields(rig, chosen))["statusCode"] == 202
    assert rig.drain_lifecycle().of("uninstall") == ["refused:uninstall_not_confirmed"]
    assert _without(rig.items(), CHECK_FIELDS) == _without(before, CHECK_FIELDS)
    # And the administrator's install replaces the employee's grant
    rig.install_event(user_id=ADMIN)
    item = rig.portal()
    assert item is not None
    assert item["grant_role"]["S"] == "admin"
    assert item["application_token_hash"]["S"] == hash_secret(rig.emulator.application_token)


# --- (2) the employee completes /authorize, or opens the install page ------------------------------


def test_an_employee_completing_authorize_is_refused_and_reads_stay_the_administrators(
    admin_rig: Rig,
) -> None:
    rig = admin_rig
    before = rig.items()
    # When an employee (not an administrator) goes /authorize -> consent -> /callback
    consent_url, nonce = rig.authorize()
    state = dict(query_of(consent_url))["state"]
    answer = rig.callback(query_of(rig.emulator.approve(state=state, user_id=EMPLOYEE)), nonce)
    # Then a clear refusal, and the administrator's grant is untouched
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (403, "administrator_required")
    assert rig.items() == before
    # And LeadsFunction still reads with the administrator's user, not the employee's
    rig.emulator.reset()
    page = rig.leads({"member_id": rig.emulator.member_id, "limit": 5})
    assert page["count"] == 5
    assert set(rig.emulator.stats()["requests_by_user"]) == {str(ADMIN)}


def test_an_employee_opening_the_install_page_keeps_the_administrators_grant(admin_rig: Rig) -> None:
    rig = admin_rig
    before = rig.items()
    for legacy in (True, False):  # the newer page also carries APPLICATION_TOKEN; neither may store
        page, _fields, _query = rig.install_page(user_id=EMPLOYEE, legacy=legacy)
        rig.emulator.install_finish()
        assert page["statusCode"] == 200
        assert rig.drain_lifecycle().outcomes == []  # nothing stored, so nothing to subscribe
        assert rig.items() == before
    rig.emulator.reset()
    assert rig.leads({"member_id": rig.emulator.member_id, "limit": 1})["count"] == 1
    assert set(rig.emulator.stats()["requests_by_user"]) == {str(ADMIN)}


# --- (3) a forged ONAPPUSERREADY -----------------------------------------------------------------------


@pytest.mark.parametrize("portal", ["unclaimed", "held by the administrator"])
def test_a_forged_user_ready_event_is_not_a_system_grant(rig: Rig, portal: str) -> None:
    if portal != "unclaimed":
        rig.install_event(user_id=ADMIN)
    before = rig.items()
    # Given ONAPPUSERREADY with employee pairs in both `data` (the "system user") and `auth`
    forged = _user_ready(rig, EMPLOYEE, OTHER_EMPLOYEE, canary_value("apptoken"))
    assert rig.post_form("/install", forged)["statusCode"] == 200
    outcomes = rig.drain_lifecycle().of("grant")
    item = rig.portal()
    assert item is not None
    if portal == "unclaimed":
        # Then the data pair is ranked like any employee's pair, and the chosen token is not kept
        assert outcomes == ["stored"]
        assert (item["grant_role"]["S"], item["user_id"]["N"]) == ("user", str(EMPLOYEE))
        assert "application_token_hash" not in item
    else:
        assert outcomes == ["refused"]
        assert rig.items() == before
    # While the genuine event (the system user's pair, installed by the administrator) is a system grant
    genuine = _user_ready(rig, SYSTEM_USER, ADMIN)
    assert rig.post_form("/install", genuine)["statusCode"] == 200
    assert rig.drain_lifecycle().of("grant") == ["stored"]
    item = rig.portal()
    assert item is not None
    assert (item["grant_role"]["S"], item["user_id"]["N"]) == ("system", str(SYSTEM_USER))


# --- (4) a flood of forged uninstalls --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # a batch where every job waited
def test_a_flood_of_forged_uninstalls_checks_bitrix24_at_most_once_per_portal_per_minute(
    admin_rig: Rig,
) -> None:
    rig = admin_rig
    before = rig.items()
    rig.emulator.reset()
    # When 25 forged ONAPPUNINSTALL arrive at once
    for _ in range(25):
        answer = rig.post_form("/events", _uninstall_fields(rig, canary_value("apptoken")))
        assert answer["statusCode"] == 202
    drained = rig.drain_lifecycle()
    # Then Bitrix24 was asked once; the rest wait for the queue's next delivery (then the alarmed DLQ)
    assert rig.emulator.stats()["oauth_app_info_requests"] == 1
    assert drained.of("uninstall").count("refused:uninstall_not_confirmed") == 1
    assert drained.retried >= 24
    assert _without(rig.items(), CHECK_FIELDS) == _without(before, CHECK_FIELDS)
    # And a minute later, one more check (and still nothing changes)
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": {"S": rig.emulator.member_id}},
        UpdateExpression="SET uninstall_check_at = uninstall_check_at - :minute",
        ExpressionAttributeValues={":minute": {"N": "61"}},
    )
    rig.drain_lifecycle(rounds=1)
    assert rig.emulator.stats()["oauth_app_info_requests"] == 2
    assert _without(rig.items(), CHECK_FIELDS) == _without(before, CHECK_FIELDS)
    # While the flood waits, the genuine uninstall ("keep data") is accepted; the next check applies it,
    # and the forgers' CLEAN=1 (without the stored application token) does not decide what is kept
    removed = rig.emulator.uninstall(clean=False)
    assert [d["status"] for d in removed["deliveries"]] == [202]
    _next_minute(rig)
    rig.drain_lifecycle()
    item = rig.portal()
    assert item is not None
    assert (item["health"]["S"], item["domain"]["S"]) == ("uninstalled", rig.emulator.portal_domain)


# --- (5) the journal holds no plaintext token ----------------------------------------------------------


def _raw_journal(rig: Rig) -> list[str]:
    return rig.queue_bodies(rig.stack.lifecycle_queue_url)


def test_journal_messages_hold_no_plaintext_token(rig: Rig) -> None:
    # Given each kind of journal message: an install event, ONAPPUSERREADY and an unproven uninstall
    answer, install = rig.install_event(user_id=ADMIN, drain=False)
    assert answer["statusCode"] == 200
    user_ready = _user_ready(rig, SYSTEM_USER, ADMIN)
    assert rig.post_form("/events", user_ready)["statusCode"] == 200
    bodies = _raw_journal(rig)
    for body in bodies:  # put back for LifecycleFunction
        rig.stack.client("sqs").send_message(QueueUrl=rig.stack.lifecycle_queue_url, MessageBody=body)
    rig.drain_lifecycle()
    forged_token = canary_value("apptoken")
    assert rig.post_form("/events", _uninstall_fields(rig, forged_token))["statusCode"] == 202
    bodies += _raw_journal(rig)
    secrets = [
        value
        for name, value in [*install, *user_ready]
        if name.endswith(("[access_token]", "[refresh_token]", "[application_token]"))
    ] + [forged_token]
    assert len(bodies) == 3
    for body in bodies:
        # Then the raw SQS body names the job in the clear and holds every token as KMS ciphertext only
        message = json.loads(body)
        assert set(message) >= {"kind", "job", "member_id", "sealed_b64"}
        decoded = base64.b64decode(message["sealed_b64"])
        for secret in secrets:
            assert secret not in body
            assert secret.encode() not in decoded
            assert base64.b64encode(secret.encode()).decode() not in body
        assert find_canaries(body) == []


def test_the_leak_canary_reads_every_journal_message() -> None:
    from b24connector.vault.journal import JournalCodec, LifecycleJob
    from tests.leak_canary import RECORDER

    # A job whose plain facts carry a secret is exactly what the canary must catch
    leaking = LifecycleJob("subscribe", "m1", facts={"note": canary_value("access")})
    clean = LifecycleJob("subscribe", "m1", facts={"note": "nothing secret"})
    codec = JournalCodec(cipher=None)  # type: ignore[arg-type]  # no secrets to seal: KMS is not called
    before = len(RECORDER.hits)
    codec.encode(clean)
    codec.encode(leaking)
    seen = RECORDER.hits[before:]
    del RECORDER.hits[before:]  # a deliberate leak: checked here, not failing the session
    assert [hit.where for hit in seen] == ["lifecycle journal message"]


# --- (6) a late install event, and an app.info timeout: nothing lost -------------------------------------


def test_a_late_install_event_is_applied_after_renewal(rig: Rig) -> None:
    # Given an ONAPPINSTALL whose access token expired before LifecycleFunction got to it
    answer, _fields = rig.install_event(user_id=ADMIN, drain=False)
    assert answer["statusCode"] == 200
    rig.emulator.expire_access_tokens()
    rig.emulator.reset()
    drained = rig.drain_lifecycle()
    # Then its own refresh token renewed it once, the new pair was journaled again, then stored
    assert drained.of("grant") == ["rejournaled", "stored"]
    assert rig.emulator.stats()["token_grants"].get("refresh_token") == 1
    item = rig.portal()
    assert item is not None
    assert (item["health"]["S"], item["grant_role"]["S"]) == ("active", "admin")
    assert rig.leads({"member_id": rig.emulator.member_id, "limit": 1})["count"] == 1


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the batch whose one job failed
def test_an_app_info_timeout_on_the_first_try_is_applied_on_the_retry(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(HTTP_TIMEOUT_SECONDS="2")
    answer, _fields = rig.install_event(user_id=ADMIN, drain=False)
    assert answer["statusCode"] == 200
    # Given the OAuth server's first app.info answer comes after the connector stopped waiting
    rig.emulator.add_faults(
        [{"target": "oauth", "method": "app.info", "kind": "slow", "delay": 3.5, "count": 1}]
    )
    drained = rig.drain_lifecycle()
    # Then the message came back (as SQS redelivers it) and the install was stored on the retry
    assert drained.of("grant") == ["retry:OAuthTransientError", "stored"]
    assert drained.retried == 1
    item = rig.portal()
    assert item is not None
    assert (item["health"]["S"], item["grant_role"]["S"]) == ("active", "admin")


# --- an application token the newer install page shows to whoever opens the app ----------------------


def _token_seen_by_an_employee(rig: Rig) -> str:
    """The APPLICATION_TOKEN the newer install page posts when an employee opens the app."""
    request = install_page_request(
        rig.emulator.state, "https://api.test/install", legacy=False, user_id=EMPLOYEE
    )
    rig.emulator.install_finish()
    seen = dict(request.fields)["APPLICATION_TOKEN"]
    assert seen == rig.emulator.application_token
    return seen


def test_an_employee_who_read_the_application_token_cannot_forge_a_system_grant(admin_rig: Rig) -> None:
    rig = admin_rig
    seen = _token_seen_by_an_employee(rig)
    forged = _user_ready(rig, EMPLOYEE, OTHER_EMPLOYEE, seen)
    assert rig.post_form("/install", forged)["statusCode"] == 200
    rig.drain_lifecycle()
    item = rig.portal()
    assert item is not None
    assert (item["grant_role"]["S"], item["user_id"]["N"]) == ("admin", str(ADMIN))


def _next_minute(rig: Rig) -> None:
    """Let the next uninstall check run at once (the connector allows one per portal per minute)."""
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": {"S": rig.emulator.member_id}},
        UpdateExpression="REMOVE uninstall_check_at",
    )
