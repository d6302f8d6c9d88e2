"""`python -m local_stack serve` as a process: busy ports fail fast, SIGTERM leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from local_stack import LocalStack, PortInUseError, StackConfig
from tests.support.servers import REPO_ROOT

REPO = REPO_ROOT
FAKE_TEMPLATE = Path(__file__).resolve().parent / "template.yaml"


def _serve_command(state_file: Path, *extra: str) -> list[str]:
    ports = [arg for name in ("api", "lambda", "aws", "portal", "oauth") for arg in (f"--{name}-port", "0")]
    return [
        sys.executable,
        "-m",
        "local_stack",
        "serve",
        "--template",
        str(FAKE_TEMPLATE),
        "--state-file",
        str(state_file),
        "--leads",
        "10",
        "--quiet",
        *ports,
        *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "functions"), str(REPO / "infra"), str(REPO)])
    return env


def _children(pid: int) -> set[int]:
    """Every live descendant of pid (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after the closing parenthesis do not.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_busy_port_fails_fast_naming_the_port(tmp_path: Path, listening_port: int) -> None:
    # Given the API port is taken
    command = [*_serve_command(tmp_path / "stack.json"), "--api-port", str(listening_port)]
    started = time.monotonic()
    # When serve starts
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=60, check=False)
    # Then it refuses at once, saying which port and what for, and starts nothing
    assert result.returncode == 1
    assert f"port {listening_port} (api) is already in use" in result.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / "stack.json").exists()


def test_python_api_refuses_a_busy_port_before_starting_anything(listening_port: int) -> None:
    stack = LocalStack(StackConfig(template=FAKE_TEMPLATE, emulator=False, aws_port=listening_port))
    with pytest.raises(PortInUseError, match=f"port {listening_port} \\(aws\\) is already in use"):
        stack.start()
    assert stack.runtimes == {}


def test_sigterm_stops_everything_and_reaps_the_children(tmp_path: Path) -> None:
    state_file = tmp_path / "stack.json"
    process = subprocess.Popen(
        _serve_command(state_file), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not state_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "serve did not write its state file"
            time.sleep(0.1)
        state = json.loads(state_file.read_text())
        assert state["status"] == "running"
        assert state["pid"] == process.pid
        # Warm a worker so its process is among the children, too
        client = boto3.client(
            "lambda",
            endpoint_url=state["lambda_endpoint_url"],
            region_name=state["aws_region"],
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        assert client.invoke(FunctionName="DirectFunction", Payload=b"{}")["StatusCode"] == 200
        children = _children(process.pid)
        assert len(children) >= 2  # the moto server and DirectFunction's worker

        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0
    assert "Local stack is up" in out
    assert "stopped." in out
    assert not any(_alive(pid) for pid in children)
    assert not state_file.exists()
