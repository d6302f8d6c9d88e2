"""AWS-compatible servers in their own processes, on ephemeral loopback ports.

Each child prints one JSON line with its port and lives until its stdin closes, so a crashed test run
leaves no server behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_PREFIX = REPO_ROOT / ".local" / "node"
DYNALITE_VERSION = "3.2.2"
_START_TIMEOUT_SECONDS = 30.0


class ChildServer:
    """A server process that reports its port as its first stdout line ({"port": N})."""

    name = "server"

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChildServer:
        """Start the child and wait for its port line."""
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        stdout = self.process.stdout
        assert stdout is not None
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(_START_TIMEOUT_SECONDS)
        if not line or not line[0].strip():
            self.stop()
            raise RuntimeError(f"{self.name} did not report its port within {_START_TIMEOUT_SECONDS:.0f} s")
        info: dict[str, Any] = json.loads(line[0])
        if "port" not in info:
            self.stop()
            raise RuntimeError(f"{self.name} failed to start: {info}")
        self.port = int(info["port"])
        return self

    def stop(self) -> None:
        """Close stdin (the child's signal to end), then make sure it is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> ChildServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT / "functions"), str(REPO_ROOT / "infra"), str(REPO_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class MotoServer(ChildServer):
    """moto's server (DynamoDB, KMS, SQS, Secrets Manager, ...) in a child process.

    `atomic_dynamodb` (default) serialises DynamoDB calls so conditional writes are atomic as in AWS
    (see infra/local_stack/moto_process.py for why and what was measured).
    """

    name = "moto server"

    def __init__(self, *, atomic_dynamodb: bool = True) -> None:
        argv = [sys.executable, "-m", "local_stack.moto_process", "--port", "0"]
        if not atomic_dynamodb:
            argv.append("--raw-dynamodb")
        super().__init__(argv, env=_python_env())
        self.atomic_dynamodb = atomic_dynamodb

    def reset(self) -> None:
        """Drop every resource in every moto backend."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  (loopback http only)
            answer.read()


def dynalite_installed() -> bool:
    """True when node and the project-local dynalite are present (.ci/run installs them)."""
    return shutil.which("node") is not None and (NODE_PREFIX / "node_modules" / "dynalite").is_dir()


def _install_command() -> list[str]:
    return ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(NODE_PREFIX),
            f"dynalite@{DYNALITE_VERSION}"]  # fmt: skip


def install_dynalite_hint() -> str:
    """The command that installs dynalite where the fixtures look for it."""
    return " ".join(_install_command())


def ensure_dynalite() -> None:
    """Install dynalite into .local/node once (npm), so `make test` works without .ci/run's step."""
    if dynalite_installed():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError(f"dynalite needs node and npm; then run: {install_dynalite_hint()}")
    import fcntl

    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may get here together: one installs, the others wait and find it done.
    with (NODE_PREFIX / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dynalite_installed():
            subprocess.run(_install_command(), check=True, cwd=REPO_ROOT, timeout=300)


class DynaliteServer(ChildServer):
    """dynalite (DynamoDB API on LevelDB/memdown, one lock per table) in a node child process."""

    name = "dynalite"

    def __init__(self) -> None:
        node = shutil.which("node") or "node"
        env = dict(os.environ)
        env["NODE_PATH"] = str(NODE_PREFIX / "node_modules")
        super().__init__([node, str(Path(__file__).with_name("dynalite_main.js"))], env=env)


class ServedInThread:
    """A server of the standard library's kind (werkzeug's included) on loopback, served from a daemon
    thread: the shell of the rig's API front and the hostile listeners."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        """The ephemeral port it listens on."""
        return int(self.server.server_address[1])  # type: ignore[index]

    def start(self) -> Self:
        """Serve in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
