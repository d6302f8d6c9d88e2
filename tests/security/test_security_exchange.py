"""The authorization code is spent at most once: a token server that fails or times out after issuing
is never asked again, the user gets a 5xx-class page that says to start over, and nothing is stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.hostile import free_port
from tests.support.rig import Rig, header


def _approved(rig: Rig) -> tuple[list[tuple[str, str]], str]:
    consent_url, nonce = rig.authorize()
    query = rig.consent(consent_url)
    rig.emulator.reset()
    return query, nonce


@pytest.mark.parametrize(
    "fault",
    [
        {"target": "oauth", "kind": "timeout_after_issue", "method": "token", "delay": 1.5},
        {"target": "oauth", "kind": "server_error", "method": "token", "status": 500},
        {"target": "oauth", "kind": "html", "method": "token", "status": 502},
        {"target": "oauth", "kind": "slow", "method": "token", "delay": 1.5},
    ],
    ids=["timeout-after-issue", "500", "html-502", "slow"],
)
def test_a_failed_code_exchange_is_not_retried_and_stores_nothing(
    rig_factory: Callable[..., Rig], fault: dict[str, Any]
) -> None:
    # Given a token server that fails (or answers after our 0.5 s read timeout)
    rig = rig_factory(HTTP_TIMEOUT_SECONDS="0.5")
    query, nonce = _approved(rig)
    rig.emulator.add_faults([{**fault, "count": 5}])
    # When the callback exchanges the code
    answer = rig.callback(query, nonce)
    # Then exactly one exchange request was made, the page is a 5xx without internals, nothing stored
    assert rig.emulator.stats()["token_requests"] == 1
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (503, "oauth_unavailable")
    assert "Traceback" not in answer["body"]
    assert rig.items() == []
    (state,) = rig.items("states")
    assert "used_at" in state  # spent: the user starts again, and a replay cannot re-try the code
    again = rig.callback(query, nonce)
    assert (again["statusCode"], header(again, "X-Reason-Code")) == (400, "state_used")
    assert rig.emulator.stats()["token_requests"] == 1


def test_an_unreachable_token_server_is_a_5xx_and_stores_nothing(rig_factory: Callable[..., Rig]) -> None:
    # Given the allow-listed OAuth server is down (nothing listens on its port)
    dead = f"http://127.0.0.1:{free_port()}"
    rig = rig_factory(OAUTH_SERVERS=dead)
    consent_url, nonce = rig.authorize()
    query = [(k, v) for k, v in rig.consent(consent_url) if k != "server_domain"]  # default server
    answer = rig.callback(query, nonce)
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (503, "oauth_unavailable")
    assert rig.items() == []
