"""The `make demo` journey, run in-process against the session's stack (not through make)."""

from __future__ import annotations

import math
from pathlib import Path

from local_stack import LocalStack
from local_stack.demo import TOTAL_STEPS, check_logs, run_demo
from tests.e2e.conftest import E2E_LEADS
from tests.e2e.helpers import admin, portal_item

PAGE_LIMIT = 500


def test_demo_journey_holds_every_step(stack: LocalStack, artifacts_dir: Path) -> None:
    # Given the stack with its seeded portal
    seeded = admin(stack, "GET", "/leads")["count"]
    assert 0 < seeded <= E2E_LEADS
    printed: list[str] = []

    # When the demo's seven steps run against it
    result = run_demo(stack, out=printed.append, page_limit=PAGE_LIMIT)

    # Then every step held, with the figures the demo claims
    assert result.ok, result.summary()
    assert [step.number for step in result.steps] == list(range(1, TOTAL_STEPS + 1))
    assert all(step.evidence for step in result.steps)
    facts = result.facts
    assert facts["leads"] == seeded
    assert facts["pages"] == math.ceil(seeded / PAGE_LIMIT)
    assert facts["count_queries"] == 0
    assert facts["lazy_refresh_token_requests"] == 1
    assert facts["scheduled_refresh_token_requests"] == 1
    # and the portal ends uninstalled, without tokens
    item = portal_item(stack)
    assert item is not None
    assert item["health"] == "uninstalled"
    assert "token_ciphertext" not in item
    # and nothing the demo printed holds a token
    text = "\n".join(printed) + result.summary()
    assert result.issued_tokens
    assert not [token for token in result.issued_tokens if token in text]
    assert "✓" in printed[-1]
    # nor does any log line the functions wrote (the stack fixture sends them to artifacts/)
    assert "none holds" in check_logs(artifacts_dir / "functions.log", result.issued_tokens)


def test_demo_summary_marks_a_failed_journey(stack: LocalStack) -> None:
    # Given a demo pointed at a portals table that does not exist
    info = stack.running_info()
    original = info.tables["PortalsTable"]
    info.tables["PortalsTable"] = "no-such-table"
    try:
        # When the demo runs
        result = run_demo(stack, page_limit=PAGE_LIMIT)
    finally:
        info.tables["PortalsTable"] = original

    # Then it stops at the first step that could not hold and says so
    assert not result.ok
    assert len(result.steps) == 1
    assert not result.steps[0].ok
    assert "ResourceNotFoundException" in result.steps[0].evidence
    summary = result.summary()
    assert "1 ✗ Install" in summary
    assert "9 ✗ Uninstall" in summary
    assert "not run" in summary
    assert f"0 of {TOTAL_STEPS} steps held" in summary
