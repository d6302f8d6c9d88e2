"""Every Handler in template.yaml names a callable that imports from functions/, as Lambda would load it.

The imports run in one child process with the deployed-style environment, so module-level state (cached
settings, Powertools singletons) never leaks into this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from operator_tools.cfn_yaml import function_environment, function_handlers
from tests.support.template_support import HANDLERS, REPO_ROOT, TEMPLATE_PATH, deployed_value

FUNCTIONS_DIR = REPO_ROOT / "functions"
_PROBE = """
import importlib, json, sys
results = {}
for handler in json.loads(sys.argv[1]):
    module_name, _, attribute = handler.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
        results[handler] = {"ok": callable(target), "error": "" if callable(target) else "not callable"}
    except Exception as exc:  # report every failure by handler, keep probing the others
        results[handler] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(results))
"""


def _module_file(handler: str) -> Path:
    module_name = handler.rpartition(".")[0]
    return FUNCTIONS_DIR.joinpath(*module_name.split(".")).with_suffix(".py")


@pytest.fixture(scope="module")
def import_results(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Import every handler in one child process with a deployed-style environment; result per handler."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR"}
    }
    env.update(
        {
            name: deployed_value(template, value)
            for name, value in function_environment(template, "LeadsFunction").items()
        }
    )
    # Only the functions directory, as in the Lambda package; fake credentials, no endpoint.
    env.update(
        {
            "PYTHONPATH": str(FUNCTIONS_DIR),
            "AWS_DEFAULT_REGION": "eu-central-1",
            "AWS_REGION": "eu-central-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_LAMBDA_FUNCTION_NAME": "import-probe",
        }
    )
    handlers = sorted(set(function_handlers(template).values()))
    answer = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(handlers)],
        env=env,
        cwd=str(FUNCTIONS_DIR),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    results: dict[str, dict[str, Any]] = json.loads(answer.stdout.strip().splitlines()[-1])
    return results


def test_template_handlers_are_the_contracted_ones(template: dict[str, Any]) -> None:
    assert function_handlers(template) == HANDLERS
    assert TEMPLATE_PATH.exists()


@pytest.mark.parametrize("function_id", sorted(HANDLERS))
def test_handler_imports_and_is_callable(import_results: dict[str, dict[str, Any]], function_id: str) -> None:
    handler = HANDLERS[function_id]
    assert _module_file(handler).exists(), f"{function_id}: no module for {handler}"
    result = import_results[handler]
    assert result["ok"], f"{function_id}: {handler}: {result['error']}"
