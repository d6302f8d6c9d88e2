"""Event forgery: install and uninstall events that cannot prove themselves change nothing at all (the
full raw DynamoDB items are compared before and after); genuine replays are idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.leak_canary import canary_value
from tests.security.harness import Rig, header


def _code(answer: dict[str, Any]) -> str | None:
    return header(answer, "X-Reason-Code")


def _with(fields: list[tuple[str, str]], **changes: str) -> list[tuple[str, str]]:
    renamed = {f"auth[{k}]": v for k, v in changes.items()}
    return [(name, renamed.get(name, value)) for name, value in fields]


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
        assert (answer["statusCode"], label) == (403, label)
        assert '"application_token_mismatch"' in answer["body"]
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
    assert rig.items() == before


def test_forged_installs_change_nothing(installed: tuple[Rig, Any, Any]) -> None:
    rig, fields_a, fields_b = installed
    other = rig.others[0]
    before = rig.items()
    b = dict(fields_b)
    forged: dict[str, tuple[list[tuple[str, str]], int, str]] = {
        # tokens the OAuth server does not know
        "unknown token": (
            _with(fields_a, access_token=canary_value("access"), refresh_token=canary_value("refresh")),
            403,
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
            403,
            "member_mismatch",
        ),
        # B's token and member_id, but A's address
        "B as A's domain": (_with(fields_b, domain=rig.emulator.portal_domain), 403, "domain_mismatch"),
        # B's token claiming A's REST endpoint
        "B with A's endpoint": (
            _with(fields_b, client_endpoint=rig.emulator.client_endpoint),
            403,
            "endpoint_mismatch",
        ),
    }
    for label, (fields, status, reason) in forged.items():
        answer = rig.post_form("/events", fields)
        assert (answer["statusCode"], label) == (status, label), answer["body"]
        assert f'"{reason}"' in answer["body"], label
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
    answer, _fields = rig.install_event()
    assert (answer["statusCode"], '"client_mismatch"' in answer["body"]) == (403, True)
    assert rig.items() == []


def test_replayed_install_event_and_page_are_idempotent(installed: tuple[Rig, Any, Any]) -> None:
    rig, fields_a, _fields_b = installed
    before = rig.items()
    for _ in range(3):
        assert rig.post_form("/events", fields_a)["statusCode"] == 200
    assert rig.items() == before
    page, page_fields, query = rig.install_page()
    assert page["statusCode"] == 200
    after_page = rig.items()
    for _ in range(2):
        assert rig.post_form("/install", page_fields, list(query.items()))["statusCode"] == 200
    assert rig.items() == after_page


def test_replayed_uninstall_is_idempotent_and_cannot_touch_a_reinstall(rig: Rig) -> None:
    # Given an installed portal that is uninstalled (data kept), with the event captured
    assert rig.install_event()[0]["statusCode"] == 200
    uninstall = rig.uninstall_fields(clean=False)
    assert rig.post_form("/events", uninstall)["statusCode"] == 200
    after_uninstall = rig.items()
    (item,) = after_uninstall
    assert item["health"]["S"] == "uninstalled"
    assert "token_ciphertext" not in item
    # When the same event is replayed
    replay = rig.post_form("/events", uninstall)
    # Then it changes nothing at all (no version, timestamp or token comes back or moves)
    assert replay["statusCode"] in (200, 403)
    assert rig.items() == after_uninstall
    # And after a reinstall (new application_token) the old event cannot uninstall the portal again
    assert rig.install_event()[0]["statusCode"] == 200
    reinstalled = rig.items()
    assert reinstalled[0]["health"]["S"] == "active"
    late = rig.post_form("/events", uninstall)
    assert late["statusCode"] == 403
    assert rig.items() == reinstalled


def test_a_replayed_old_grant_cannot_revive_an_uninstalled_portal(rig: Rig) -> None:
    answer, fields = rig.install_event()
    assert answer["statusCode"] == 200
    assert rig.post_form("/events", rig.uninstall_fields(clean=True))["statusCode"] == 200
    tombstone = rig.items()
    replay = rig.post_form("/events", fields)
    assert replay["statusCode"] == 403  # the uninstall revoked the tokens: app.info refuses them
    assert rig.items() == tombstone
