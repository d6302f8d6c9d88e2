"""Event forgery: install and uninstall events that cannot prove themselves change nothing at all (the
full raw DynamoDB items are compared before and after); genuine replays are idempotent.

Install events are journaled and answered 200 "accepted" before anything is checked; LifecycleFunction
then refuses a forgery for good (the drained job's outcome names why). An uninstall that the stored
application token does not prove is journaled (202) and refused after Bitrix24 says the app is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from b24connector.vault.hashing import hash_secret
from tests.leak_canary import canary_value
from tests.support.rig import Rig, header


def _code(answer: dict[str, Any]) -> str | None:
    return header(answer, "X-Reason-Code")


def _with(fields: list[tuple[str, str]], **changes: str) -> list[tuple[str, str]]:
    renamed = {f"auth[{k}]": v for k, v in changes.items()}
    return [(name, renamed.get(name, value)) for name, value in fields]


# Bookkeeping an unproven uninstall may touch: the time of the last check with Bitrix24 (the throttle).
CHECK_FIELDS = {"uninstall_check_at"}
# ... and what a replayed grant touches: the time its event.bind subscriptions were last checked.
SUBSCRIPTION_CHECK = {"subscription_checked_at"}


def _without(items: list[dict[str, Any]], fields: set[str]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k not in fields} for item in items]


@pytest.fixture
def installed(rig_factory: Callable[..., Rig]) -> tuple[Rig, list[tuple[str, str]], list[tuple[str, str]]]:
    """Portals A and B, both installed through genuine ONAPPINSTALL events; (rig, A's fields, B's fields)."""
    rig = rig_factory(portals=2)
    answer_a, fields_a = rig.install_event()
    answer_b, fields_b = rig.install_event(rig.others[0])
    assert answer_a["statusCode"] == answer_b["statusCode"] == 200
    return rig, fields_a, fields_b


def test_forged_uninstalls_change_nothing(installed: tuple[Rig, Any, Any]) -> None:
    rig, fields_a, fields_b = installed
    a_token = dict(fields_a)["auth[application_token]"]
    b_token = dict(fields_b)["auth[application_token]"]
    member_a = rig.emulator.member_id
    before = rig.items()
    attempts = {
        # The real token proves nothing: newer install pages post it into every employee's app frame
        "the real application token": (member_a, a_token),
        "the stored verifier": (member_a, hash_secret(a_token)),
        "wrong token": (member_a, canary_value("apptoken")),
        "other portal's token": (member_a, b_token),
        "token with a suffix": (member_a, a_token + "0"),
        "token prefix": (member_a, a_token[:-1]),
        "token in upper case": (member_a, a_token.upper()),
        "unknown member_id": ("f" * 32, a_token),
        "member_id with a suffix": (member_a + "0", a_token),
    }
    for label, (member_id, token) in attempts.items():
        fields = [
            ("event", "ONAPPUNINSTALL"),
            ("data[CLEAN]", "1"),
            ("auth[member_id]", member_id),
            ("auth[application_token]", token),
            ("auth[domain]", rig.emulator.portal_domain),
        ]
        answer = rig.post_form("/events", fields)
        if member_id == member_a:
            # Journaled for Bitrix24 to confirm, nothing changed yet
            assert (answer["statusCode"], label) == (202, label)
            assert '"verification":"pending"' in answer["body"]
        else:
            assert (answer["statusCode"], label) == (403, label)
            assert '"portal_unknown"' in answer["body"]
        # LifecycleFunction asks Bitrix24 with the stored grant: the app is installed, so it is refused
        drained = rig.drain_lifecycle()
        if member_id == member_a:
            assert drained.of("uninstall") == ["refused:uninstall_not_confirmed"], (label, drained)
        assert _without(rig.items(), CHECK_FIELDS) == _without(before, CHECK_FIELDS), label
        _next_minute(rig, member_a)
    for fields, status in (
        ([("event", "ONAPPUNINSTALL"), ("auth[member_id]", member_a)], 400),
        ([("event", "ONAPPUNINSTALL"), ("auth[member_id]", member_a), ("auth[application_token]", "")], 400),
        ([("event", "ONAPPUNINSTALL"), ("auth[application_token]", a_token)], 400),
        (
            [("event", "onappuninstall"), ("auth[member_id]", "x y"), ("auth[application_token]", a_token)],
            400,
        ),
    ):
        assert rig.post_form("/events", fields)["statusCode"] == status
    assert _without(rig.items(), CHECK_FIELDS) == _without(before, CHECK_FIELDS)


def _next_minute(rig: Rig, member_id: str) -> None:
    """Move the portal's last uninstall check a minute back, as if the next forgery came a minute later."""
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": {"S": member_id}},
        UpdateExpression="REMOVE uninstall_check_at",
    )


def test_forged_installs_change_nothing(installed: tuple[Rig, Any, Any]) -> None:
    rig, fields_a, fields_b = installed
    other = rig.others[0]
    before = rig.items()
    b = dict(fields_b)
    forged: dict[str, tuple[list[tuple[str, str]], str]] = {
        # tokens the OAuth server does not know
        "unknown token": (
            _with(fields_a, access_token=canary_value("access"), refresh_token=canary_value("refresh")),
            "token_rejected",
        ),
        # portal B's genuine token presented as portal A (member_id and domain of A)
        "B's token as A": (
            _with(
                fields_a,
                access_token=b["auth[access_token]"],
                refresh_token=b["auth[refresh_token]"],
                server_endpoint=b["auth[server_endpoint]"],
            ),
            "member_mismatch",
        ),
        # B's token and member_id, but A's address
        "B as A's domain": (_with(fields_b, domain=rig.emulator.portal_domain), "domain_mismatch"),
        # B's token claiming A's REST endpoint
        "B with A's endpoint": (
            _with(fields_b, client_endpoint=rig.emulator.client_endpoint),
            "endpoint_mismatch",
        ),
    }
    for label, (fields, reason) in forged.items():
        # Accepted durably at once (Bitrix24 sends an event once), checked by LifecycleFunction
        answer = rig.post_form("/events", fields)
        assert (answer["statusCode"], label) == (200, label), answer["body"]
        assert answer["body"] == '{"status":"accepted"}'
        drained = rig.drain_lifecycle()
        assert (drained.of("grant"), label) == ([f"refused:{reason}"], label)
        assert drained.retried == 0  # refused for good: no retry can change Bitrix24's answer
    # The install page with a token app.info does not confirm
    page_fields = [
        ("AUTH_ID", canary_value("access")),
        ("AUTH_EXPIRES", "3600"),
        ("REFRESH_ID", canary_value("refresh")),
        ("SERVER_ENDPOINT", rig.emulator.server_endpoint),
        ("member_id", rig.emulator.member_id),
    ]
    page = rig.post_form("/install", page_fields, [("DOMAIN", rig.emulator.portal_domain)])
    assert (page["statusCode"], _code(page)) == (403, "token_rejected")
    assert rig.items() == before
    assert other.stats()["token_requests"] == 0  # verification uses app.info only, never the token endpoint


def test_an_app_info_answer_for_another_app_is_refused(rig_factory: Callable[..., Rig]) -> None:
    # Given a portal whose OAuth server says the token belongs to a different application (client_id)
    rig = rig_factory(emulator={"client_id": "local.other.app"})
    answer, _fields = rig.install_event(drain=False)
    assert answer["statusCode"] == 200
    assert rig.drain_lifecycle().of("grant") == ["refused:client_mismatch"]
    assert rig.items() == []


def test_replayed_install_event_and_page_are_idempotent(installed: tuple[Rig, Any, Any]) -> None:
    rig, fields_a, _fields_b = installed
    before = rig.items()
    for _ in range(3):
        assert rig.post_form("/events", fields_a)["statusCode"] == 200
    drained = rig.drain_lifecycle()
    assert drained.retried == 0
    # A replayed pair changes no grant (its digest is known); only the subscription check runs again
    assert _without(rig.items(), SUBSCRIPTION_CHECK) == _without(before, SUBSCRIPTION_CHECK)
    page, page_fields, query = rig.install_page()
    assert page["statusCode"] == 200
    rig.drain_lifecycle()
    after_page = rig.items()
    for _ in range(2):
        assert rig.post_form("/install", page_fields, list(query.items()))["statusCode"] == 200
    rig.drain_lifecycle()
    assert _without(rig.items(), SUBSCRIPTION_CHECK) == _without(after_page, SUBSCRIPTION_CHECK)


def test_replayed_uninstall_is_idempotent_and_cannot_touch_a_reinstall(rig: Rig) -> None:
    # Given an installed portal that is uninstalled (data kept), with the event captured
    assert rig.install_event()[0]["statusCode"] == 200
    uninstall = rig.uninstall_fields(clean=False)
    assert rig.post_form("/events", uninstall)["statusCode"] == 202  # confirmed with Bitrix24 first
    assert rig.drain_lifecycle().of("uninstall") == ["uninstalled"]
    after_uninstall = rig.items()
    (item,) = after_uninstall
    assert item["health"]["S"] == "uninstalled"
    assert "token_ciphertext" not in item
    # When the same event is replayed
    replay = rig.post_form("/events", uninstall)
    rig.drain_lifecycle()
    # Then it changes nothing at all (no version, timestamp or token comes back or moves)
    assert replay["statusCode"] == 200  # nothing left to confirm: already applied
    assert rig.items() == after_uninstall
    # And after a reinstall (new application_token) the old event cannot uninstall the portal again:
    # it is unproven, and Bitrix24 says the app is installed
    assert rig.install_event()[0]["statusCode"] == 200
    reinstalled = rig.items()
    assert reinstalled[0]["health"]["S"] == "active"
    late = rig.post_form("/events", uninstall)
    assert late["statusCode"] == 202
    assert rig.drain_lifecycle().of("uninstall") == ["refused:uninstall_not_confirmed"]
    assert _without(rig.items(), CHECK_FIELDS) == _without(reinstalled, CHECK_FIELDS)


def test_a_replayed_old_grant_cannot_revive_an_uninstalled_portal(rig: Rig) -> None:
    answer, fields = rig.install_event()
    assert answer["statusCode"] == 200
    assert rig.post_form("/events", rig.uninstall_fields(clean=True))["statusCode"] == 202
    assert rig.drain_lifecycle().of("uninstall") == ["uninstalled"]
    tombstone = rig.items()
    replay = rig.post_form("/events", fields)
    assert replay["statusCode"] == 200  # accepted into the journal ...
    # ... and refused there: the uninstall revoked the tokens, so app.info refuses them
    assert rig.drain_lifecycle().of("grant") == ["refused:token_rejected"]
    assert rig.items() == tombstone
