"""The leak canary itself: it sees secrets wherever they show up, names the place and not the value,
fails the session, and honours reasoned exemptions (tiny pytest sessions in subprocesses)."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bitrix24_emulator import Clock, EmulatorConfig
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.tokens import new_secret
from tests.leak_canary import CANARY_ENV, CANARY_PREFIX, STATIC_CANARIES, canary_value, find_canaries
from tests.support.servers import REPO_ROOT

REPO = REPO_ROOT
LEAKING_TESTS = {
    "test_debug_log": 'logging.getLogger("app.deep").debug("got %s", TOKEN)',
    "test_log_extra": 'logging.getLogger("app").info("refreshed", extra={"pair": {"a": TOKEN}})',
    "test_exception_logged": """
        try:
            raise RuntimeError(f"boom {TOKEN}")
        except RuntimeError:
            logging.getLogger("app").exception("failed")""",
    "test_print": "print(TOKEN)",
    "test_stderr": "sys.stderr.write(TOKEN)",
    "test_read_by_capsys": "print(TOKEN)\ncapsys.readouterr()",
    "test_powertools_logger": 'Logger(service="leaky").info({"token": TOKEN})',
    "test_problem_text": 'invalid("bad_token", f"token {TOKEN} refused")',
    "test_http_answer": "HttpResponse(200, body=TOKEN).to_event()",
    "test_leads_answer": 'LeadsRefusal("UPSTREAM_ERROR", TOKEN).answer()',
    "test_static_client_secret": 'print("the secret is test-client-secret")',
    "test_failure_text": "assert TOKEN == 'x'",
}
HEADER = """
import logging
import sys

import pytest
from aws_lambda_powertools import Logger

from b24connector.leads import LeadsRefusal
from b24connector.problems import invalid
from b24connector.web.http import HttpResponse
from bitrix24_emulator.tokens import new_secret

TOKEN = new_secret()
with open("minted.txt", "a") as minted:
    minted.write(TOKEN + "\\n")
"""


def _session(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.leak_canary"]\n')
    (tmp_path / "test_inner.py").write_text(HEADER + body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("functions", "infra", "."))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "test_inner.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _test(name: str, statement: str, *, marker: str = "") -> str:
    return f"\n\n{marker}def {name}(capsys):\n{textwrap.indent(textwrap.dedent(statement).strip(), '    ')}\n"


def test_the_canary_fails_a_session_that_leaks_and_names_every_place(tmp_path: Path) -> None:
    body = "".join(_test(name, statement) for name, statement in LEAKING_TESTS.items())
    body += _test("test_clean", 'logging.getLogger("app").info("nothing secret here")')
    body += _test(
        "test_exempt",
        "print(TOKEN)",
        marker='@pytest.mark.allow_secret_output(reason="shows a token on purpose")\n',
    )
    result = _session(tmp_path, body)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    # The canary's own section only: pytest's failure sections and (with CI set, untruncated) short
    # summary quote the failing test's assertion, token included, which is the test's point.
    report = output[output.index("leak canary: secrets appeared in output") :]
    report = report[: report.index("the session fails.")]
    for name in LEAKING_TESTS:
        assert f"test_inner.py::{name}:" in report, name
    assert "test_inner.py::test_clean:" not in report
    assert "test_inner.py::test_exempt:" not in report
    assert "static client secret" in report
    # The report says where, never what
    minted = (tmp_path / "minted.txt").read_text().split()
    assert minted
    assert not any(token in report for token in minted)


def test_a_clean_session_passes_and_exemptions_need_a_reason(tmp_path: Path) -> None:
    clean = _test("test_clean", 'logging.getLogger("app").debug("fine")') + _test(
        "test_exempt", "print(TOKEN)", marker='@pytest.mark.allow_secret_output(reason="admin API test")\n'
    )
    result = _session(tmp_path, clean)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leak canary: 0 hits" in result.stdout
    unreasoned = _test("test_exempt", "print(TOKEN)", marker="@pytest.mark.allow_secret_output\n")
    second = tmp_path / "unreasoned"
    second.mkdir()
    result = _session(second, unreasoned)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "needs reason=" in result.stdout + result.stderr


def test_the_emulator_mints_canary_marked_secrets() -> None:
    assert os.environ[CANARY_ENV] == CANARY_PREFIX
    config = EmulatorConfig()
    state = EmulatorState(config, Clock())
    for secret in (new_secret(), new_secret(50), config.client_secret, state.application_token):
        assert secret.startswith(CANARY_PREFIX)
        assert find_canaries(f"...{secret}...") == ["minted"]
    assert len(new_secret()) == 32
    assert all(ch in "0123456789abcdef" for ch in state.application_token)
    assert canary_value("clientsecret", 50).startswith(CANARY_PREFIX)
    assert find_canaries(f"x {STATIC_CANARIES[0]} y") == ["static client secret"]
    assert find_canaries("nothing to see") == []


def test_the_product_pins_chatty_library_loggers_at_warning() -> None:
    # botocore logs request bodies, urllib3 URLs, PynamoDB every call's arguments at DEBUG
    for module in (
        "b24connector.handlers.authorize",
        "b24connector.handlers.callback",
        "b24connector.handlers.install",
        "b24connector.handlers.leads",
        "b24connector.handlers.refresh_sweep",
        "b24connector.handlers.refresh_worker",
        "b24connector.handlers.token_rescue",
    ):
        importlib.import_module(module)
    for name in ("urllib3", "botocore", "boto3", "requests", "pynamodb"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
