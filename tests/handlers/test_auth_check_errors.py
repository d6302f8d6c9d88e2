"""401 codes of the portal's token check, end to end: CONNECTION_ERROR is transient, never REAUTH_REQUIRED.

The codes and what LeadsFunction answers for them are tabled in docs/bitrix24-errors.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from bitrix24_emulator import Emulator
from tests.support.rig import Rig

pytestmark = pytest.mark.integration


def _install(rig: Rig, emulator: Emulator) -> dict[str, Any]:
    rig.http.install_event()
    item = rig.portal()
    assert item is not None
    return item


def _auth_check_fails(emulator: Emulator, count: int) -> None:
    emulator.add_faults(
        [
            {
                "target": "rest",
                "kind": "error",
                "status": 401,
                "error": "CONNECTION_ERROR",
                "error_description": "Error connecting to authorization server",
                "count": count,
            }
        ]
    )


def test_a_failed_token_check_on_the_portal_is_retried_and_the_read_succeeds(
    rig: Rig, emulator: Emulator
) -> None:
    # Given the portal's check with its OAuth server fails once
    before = _install(rig, emulator)
    _auth_check_fails(emulator, 1)
    emulator.reset()
    # When LeadsFunction reads
    page = rig.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    # Then the read is retried with the same token and succeeds; no refresh, the record as it was
    assert len(page["leads"]) == 5, page
    assert emulator.stats()["token_requests"] == 0
    assert rig.portal() == before


def test_a_token_check_that_keeps_failing_is_an_upstream_error_not_reauth(
    rig: Rig, emulator: Emulator
) -> None:
    # Given the portal's check with its OAuth server keeps failing
    before = _install(rig, emulator)
    _auth_check_fails(emulator, 20)
    emulator.reset()
    # When LeadsFunction reads
    answer = rig.leads(member_id=emulator.member_id, select=["ID"], limit=5)
    # Then the caller is told to retry later, never to re-authorize, and nothing is flagged
    assert answer["error"]["code"] == "UPSTREAM_ERROR", answer
    assert "CONNECTION_ERROR" in answer["error"]["message"]
    assert emulator.stats()["token_requests"] == 0
    assert rig.portal() == before
    assert before["health"]["S"] == "active"
