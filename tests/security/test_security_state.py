"""State and CSRF: single use under concurrency, the TTL boundary, cookies that fail closed, constant-time
comparisons (spied at run time and checked by an AST scan)."""

from __future__ import annotations

import ast
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from b24connector import wiring
from b24connector.authorization import AuthorizationFlow
from b24connector.settings import get_settings
from b24connector.vault.hashing import hash_secret
from b24connector.vault.states import StateStore
from tests.support.rig import BACKENDS, COOKIE, Rig, header
from tests.support.servers import REPO_ROOT

PACKAGE = REPO_ROOT / "functions" / "b24connector"
RACERS = 8


def _reason(answer: dict[str, Any]) -> str | None:
    return header(answer, "X-Reason-Code")


# --- single use --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # threads share one metric set
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_callbacks_with_one_state_exchange_the_code_exactly_once(
    rig_factory: Callable[..., Rig], backend: str, one_metric_flush_at_a_time: None
) -> None:
    # Given one authorization approved on the portal
    rig = rig_factory(backend=backend)
    consent_url, nonce = rig.authorize()
    query = rig.consent(consent_url)
    rig.emulator.reset()
    barrier = threading.Barrier(RACERS)
    answers: list[Any] = [None] * RACERS

    def race(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = rig.callback(query, nonce)
        except Exception as exc:  # reported by the assertion below
            answers[index] = {"statusCode": f"raised {exc!r}"}

    # When the same callback arrives RACERS times at once (a double click, a replayed redirect)
    threads = [threading.Thread(target=race, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then exactly one wins; the others are refused as already used, and the code was exchanged once
    statuses = sorted(a["statusCode"] for a in answers)
    assert statuses == [200] + [400] * (RACERS - 1), statuses
    assert {_reason(a) for a in answers if a["statusCode"] == 400} == {"state_used"}
    assert rig.emulator.stats()["token_requests"] == 1
    item = rig.portal()
    assert item is not None
    assert item["version"]["N"] == "1"
    (state,) = rig.items("states")
    assert "used_at" in state


def test_a_replayed_callback_after_success_changes_nothing(rig: Rig) -> None:
    consent_url, nonce = rig.authorize()
    query = rig.consent(consent_url)
    assert rig.callback(query, nonce)["statusCode"] == 200
    before = rig.items()
    again = rig.callback(query, nonce)
    assert (again["statusCode"], _reason(again)) == (400, "state_used")
    assert rig.items() == before
    assert rig.emulator.stats()["token_requests"] == 1


# --- expiry boundary with a frozen clock ---------------------------------------------------------


class FrozenClock:
    """A clock that moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _frozen_flow(monkeypatch: pytest.MonkeyPatch, clock: FrozenClock) -> int:
    """Wire the real flow (real tables, OAuth client, vault) with `clock`; returns the TTL."""
    conf = get_settings()
    vault = wiring.vault(conf)
    states = StateStore(vault.states.model, ttl_seconds=conf.state_ttl_seconds, clock=clock)
    flow = AuthorizationFlow(
        wiring.portal_policy(conf),
        states,
        wiring.oauth_client(conf),
        wiring.installer(conf),
        ttl_seconds=conf.state_ttl_seconds,
    )
    monkeypatch.setattr(wiring, "authorization_flow", lambda _conf: flow)
    return conf.state_ttl_seconds


@pytest.mark.parametrize(
    ("offset", "status", "reason"), [(-1, 200, None), (0, 400, "state_expired"), (1, 400, "state_expired")]
)
def test_state_expiry_boundary(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, offset: int, status: int, reason: str | None
) -> None:
    # Given a state issued at t0 under a frozen clock
    clock = FrozenClock(float(int(time.time())))
    ttl = _frozen_flow(monkeypatch, clock)
    consent_url, nonce = rig.authorize()
    query = rig.consent(consent_url)
    (stored,) = rig.items("states")
    assert int(stored["expires_at"]["N"]) == int(clock.now) + ttl
    # When the callback comes at t0 + TTL + offset (DynamoDB's TTL sweep has not run: the item exists)
    clock.now += ttl + offset
    answer = rig.callback(query, nonce)
    # Then only a state still inside its TTL is accepted
    assert (answer["statusCode"], _reason(answer)) == (status, reason)
    if status == 200:
        (used,) = rig.items("states")
        assert "used_at" in used
        assert rig.emulator.stats()["token_requests"] == 1
    else:
        assert rig.items("states") == [stored]  # refused by the code, not by a missing item
        assert rig.emulator.stats()["token_requests"] == 0
        assert rig.portal() is None


# --- cookies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cookies", "reason"),
    [
        ([], "cookie_missing"),
        ([f"{COOKIE}="], "cookie_missing"),
        (["b24-oauth=NONCE"], "cookie_missing"),  # the right value under another name
        ([f"{COOKIE}=FOREIGN"], "cookie_mismatch"),  # another browser's sign-in
        ([f"{COOKIE}=NONCE", f"{COOKIE}=FOREIGN"], "cookie_ambiguous"),
        ([f"{COOKIE}=NONCEx"], "cookie_mismatch"),
        ([f"{COOKIE}=" + "A" * 4000], "cookie_mismatch"),
        ([f"{COOKIE}=\ud800NONCE"], "cookie_mismatch"),  # a lone surrogate crashed hashing (500)
        ([f"{COOKIE}=NONCE\u00e9"], "cookie_mismatch"),
        ([f"{COOKIE}=NONCE\x00"], "cookie_mismatch"),
    ],
    ids=[
        "none",
        "empty",
        "other-name",
        "foreign",
        "two-values",
        "suffixed",
        "huge",
        "surrogate",
        "non-ascii",
        "nul",
    ],
)
def test_missing_empty_or_foreign_cookies_fail_closed(rig: Rig, cookies: list[str], reason: str) -> None:
    # Given a victim's approved authorization and an attacker's own (foreign) sign-in cookie
    consent_url, nonce = rig.authorize()
    _other_url, foreign = rig.authorize()
    query = rig.consent(consent_url)
    rig.emulator.reset()
    sent = [c.replace("=NONCE", f"={nonce}").replace("=FOREIGN", f"={foreign}") for c in cookies]
    # When the callback carries a cookie that is not the one this browser got
    answer = rig.get("/callback", query, cookies=sent)
    # Then it is refused before the code is spent, the cookie is cleared, nothing is stored
    assert (answer["statusCode"], _reason(answer)) == (400, reason)
    assert any(c.startswith(f"{COOKIE}=; Max-Age=0") for c in answer.get("cookies", []))
    assert rig.emulator.stats()["token_requests"] == 0
    assert rig.portal() is None
    # And the genuine browser can still finish
    assert rig.callback(query, nonce)["statusCode"] == 200


def _put_state(rig: Rig, raw_state: str, **attributes: dict[str, str]) -> None:
    item = {"state_hash": {"S": hash_secret(raw_state)}, **attributes}
    rig.stack.client("dynamodb").put_item(TableName=rig.stack.states_table, Item=item)


@pytest.mark.parametrize(
    "stored",
    [
        "empty_nonce_hash",
        "hash_of_empty_nonce",
        "no_nonce_hash",
        "empty_portal",
        "no_expiry",
        "expiry_zero",
    ],
)
def test_a_damaged_or_empty_stored_state_fails_closed(rig: Rig, stored: str) -> None:
    # Given a states-table item that is empty or damaged in one way (written straight to DynamoDB)
    raw_state = "s" * 43
    nonce = "n" * 43
    now = int(time.time())
    good = {
        "nonce_hash": {"S": hash_secret(nonce)},
        "portal_domain": {"S": rig.emulator.portal_domain},
        "created_at": {"N": str(now)},
        "expires_at": {"N": str(now + 300)},
    }
    damage: dict[str, Any] = {
        "empty_nonce_hash": {"nonce_hash": {"S": ""}},
        "hash_of_empty_nonce": {"nonce_hash": {"S": hash_secret("")}},
        "no_nonce_hash": {"nonce_hash": None},
        "empty_portal": {"portal_domain": {"S": ""}},
        "no_expiry": {"expires_at": None},
        "expiry_zero": {"expires_at": {"N": "0"}},
    }[stored]
    attributes = {k: v for k, v in {**good, **damage}.items() if v is not None}
    _put_state(rig, raw_state, **attributes)
    code = rig.emulator.authorization_code()
    rig.emulator.reset()
    query = [
        ("code", code),
        ("state", raw_state),
        ("domain", rig.emulator.portal_domain),
        ("member_id", rig.emulator.member_id),
        ("server_domain", rig.emulator.oauth_domain),
    ]
    # When a callback names it, with a cookie that either matches or is empty
    for cookie in (nonce, ""):
        answer = rig.callback(query, cookie)
        # Then nothing is exchanged or stored (a damaged record is never a valid authorization)
        assert 400 <= answer["statusCode"] < 600, answer
        assert answer["statusCode"] != 200
    assert rig.emulator.stats()["token_requests"] == 0
    assert rig.portal() is None


# --- constant-time comparisons -----------------------------------------------------------------


@pytest.fixture
def compare_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Every hmac.compare_digest call's arguments (the real function still answers)."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


def test_the_cookie_check_compares_hashes_with_compare_digest(
    rig: Rig, compare_spy: list[tuple[Any, Any]]
) -> None:
    consent_url, nonce = rig.authorize()
    _other, foreign = rig.authorize()
    query = rig.consent(consent_url)
    answer = rig.callback(query, foreign)
    assert _reason(answer) == "cookie_mismatch"
    expected = (hashlib.sha256(nonce.encode()).hexdigest(), hashlib.sha256(foreign.encode()).hexdigest())
    assert expected in compare_spy
    # Raw nonces never meet a comparison in process: only their SHA-256 hashes do
    flat = [str(value) for pair in compare_spy for value in pair]
    assert nonce not in flat
    assert foreign not in flat


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _compared(calls: list[tuple[Any, Any]], stored: str, given: str) -> bool:
    """True when one call compared `stored` with `given`, raw or as SHA-256 hex (both sides alike)."""
    forms = [
        (stored.encode(), given.encode()),
        (hash_secret(stored).encode(), hash_secret(given).encode()),
    ]
    return any((_as_bytes(a), _as_bytes(b)) in forms for a, b in calls)


def test_the_uninstall_check_uses_compare_digest(rig: Rig, compare_spy: list[tuple[Any, Any]]) -> None:
    # Given an administrator's install (its application token is stored) and an uninstall Bitrix24 confirms
    answer, fields = rig.install_event()
    assert answer["statusCode"] == 200
    stored = dict(fields)["auth[application_token]"]
    genuine = rig.uninstall_fields(clean=True)  # the emulator removes the app
    forged = "0" * len(stored)
    forged_fields = [(k, forged if k == "auth[application_token]" else v) for k, v in genuine]
    compare_spy.clear()
    # When a notice with another token is the one confirmed
    assert rig.post_form("/events", forged_fields)["statusCode"] == 202
    assert rig.drain_lifecycle().of("uninstall") == ["uninstalled"]
    # Then deciding whether its CLEAN=1 counts compared the token's hash in constant time
    assert _compared(compare_spy, stored, forged), compare_spy


def test_unknown_portals_are_refused_without_touching_a_secret(
    rig: Rig, compare_spy: list[tuple[Any, Any]]
) -> None:
    # No application token is compared at the door any more (every uninstall is confirmed with
    # Bitrix24), so nothing about a stored secret can leak through timing; unknown portals get a 403.
    fields = [
        ("event", "ONAPPUNINSTALL"),
        ("auth[member_id]", "f" * 32),
        ("auth[application_token]", "a" * 32),
    ]
    answer = rig.post_form("/events", fields)
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (403, "portal_unknown")
    assert compare_spy == []
    assert rig.drain_lifecycle().of("uninstall") == []


SECRET_NAME = (
    "token",
    "secret",
    "nonce",
    "state",
    "code",
    "verifier",
    "digest",
    "hash",
    "mac",
    "signature",
    "password",
    "cookie",
)
SCANNED = [
    "authorization.py",
    "install/installer.py",
    "install/parsing.py",
    "install/jobs.py",
    "install/probes.py",
    "pkce.py",
    "leads/cursor.py",
    "leads/errors.py",
    "leads/reader.py",
    "leads/request.py",
    "handlers/authorize.py",
    "handlers/callback.py",
    "handlers/install.py",
    "web/http.py",
    "vault/dynamo.py",
    "vault/leases.py",
    "vault/states.py",
    "vault/store.py",
]
# PynamoDB attributes overload `==` to build a DynamoDB condition expression, evaluated by DynamoDB on
# stored hashes; such a comparison never runs in Python.
CONDITION_BUILDERS = ("m.", "self.model.", "model.")
# Comparisons of names that look secret but are not, with the reason.
NOT_SECRET: dict[tuple[str, str], str] = {
    ("leads/errors.py", "exc.code"): "a Bitrix24 error code, not a secret",
    ("vault/dynamo.py", "exc.cause_response_code"): "an AWS error code, not a secret",
    (
        "install/installer.py",
        "self._role_of(installer.tokens, event.grant.domain)",
    ): "a role name, not a secret",
}


def _compared_names(node: ast.AST) -> list[str]:
    """The names a value stands for: `a.b.c` is `c`, `f(x)` is `f` and `x`, `a[k]` is `a`."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Call):
        return _compared_names(node.func) + [n for arg in node.args for n in _compared_names(arg)]
    if isinstance(node, ast.Subscript):
        return _compared_names(node.value)
    return [n for child in ast.iter_child_nodes(node) for n in _compared_names(child)]


def _secret_like(node: ast.AST) -> bool:
    return any(part in name.lower() for name in _compared_names(node) for part in SECRET_NAME)


def secret_equality_comparisons(source: str, filename: str) -> list[str]:
    """`==`/`!=` comparisons where a non-literal operand looks like a secret (file:line: text)."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if not isinstance(op, ast.Eq | ast.NotEq):
                continue
            if isinstance(left, ast.Constant) or isinstance(right, ast.Constant):
                continue  # presence checks against "", None or a fixed word leak nothing
            if ast.unparse(left).startswith(CONDITION_BUILDERS):
                continue
            if any(
                _secret_like(side) and (filename, ast.unparse(side)) not in NOT_SECRET
                for side in (left, right)
            ):
                problems.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return problems


@pytest.mark.parametrize("relative", SCANNED)
def test_no_equality_operator_touches_a_secret(relative: str) -> None:
    path = PACKAGE / relative
    assert secret_equality_comparisons(path.read_text(), relative) == []


def test_the_ast_scan_catches_a_secret_comparison() -> None:
    bad = "def check(given, stored_token):\n    return given != stored_token\n"
    assert secret_equality_comparisons(bad, "x.py") == ["x.py:2: given != stored_token"]
    condition = "def cond(m, h):\n    return m.nonce_hash == h\n"
    assert secret_equality_comparisons(condition, "x.py") == []
    hashed = "def check(raw, stored):\n    return stored.nonce_hash == hash_secret(raw)\n"
    assert secret_equality_comparisons(hashed, "x.py") == ["x.py:2: stored.nonce_hash == hash_secret(raw)"]
    fine = "def check(given, stored_token, tokens, params):\n    return hmac.compare_digest(given, stored_token) and given != '' and tokens.member_id == params.member_id\n"
    assert secret_equality_comparisons(fine, "x.py") == []


def test_the_modules_that_check_secrets_use_compare_digest() -> None:
    for relative in ("vault/states.py", "install/installer.py", "leads/cursor.py", "leads/reader.py"):
        assert "hmac.compare_digest(" in (PACKAGE / relative).read_text(), relative
