"""Every handler of the template pauses the cyclic collector while it imports, then freezes and resumes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from operator_tools.cfn_yaml import function_handlers, load_template
from tests.support.servers import REPO_ROOT

MODULES = sorted(
    {h.rsplit(".", 1)[0] for h in function_handlers(load_template(REPO_ROOT / "template.yaml")).values()}
)
_PROBE = """
import gc, sys
import b24connector.handlers
paused = not gc.isenabled()
import {module}
print(paused, gc.isenabled(), gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize("module", MODULES)
def test_a_handler_import_ends_with_the_collector_running_and_the_import_frozen(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-P", "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": "functions", "PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "eu-central-1"},
    )
    # Paused during the import, running after it (a handler module without import_done() fails here)
    assert out.stdout.split() == ["True", "True", "True"], f"{module} must end with import_done()"
