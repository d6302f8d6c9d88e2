"""Settings of the local stack: ports, sizes, template, and the port checks done before anything starts."""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"  # loopback only: the stack has no authentication and must not be reachable from outside

# Default ports of `make serve`, one block; 0 anywhere means "any free port".
DEFAULT_PORTS: dict[str, int] = {
    "api": 8600,  # API Gateway HttpApi front (the public routes)
    "lambda": 8601,  # Lambda Invoke API
    "aws": 8602,  # moto server (DynamoDB, KMS, SQS, Secrets Manager)
    "portal": 8603,  # emulated Bitrix24 portal (/oauth/authorize/, /rest/)
    "oauth": 8604,  # emulated Bitrix24 OAuth server (/oauth/token/, /rest/app.info)
}
DEFAULT_STATE_FILE = REPO_ROOT / ".local" / "stack.json"


class PortInUseError(RuntimeError):
    """A configured port is taken; the message names the port and what it was for."""


@dataclass
class StackConfig:
    """What to start and where. Ports default to 0 (ephemeral) for tests; `serve` uses DEFAULT_PORTS."""

    template: Path = REPO_ROOT / "template.yaml"
    api_port: int = 0
    lambda_port: int = 0
    aws_port: int = 0
    portal_port: int = 0
    oauth_port: int = 0
    region: str = "eu-central-1"
    stack_name: str = "b24connector-local"
    leads: int = 10_000
    workers_per_function: int = 4
    poll_queues: bool = False
    poll_interval_seconds: float = 1.0
    prewarm: bool = False
    emulator: bool = True
    # Extra EmulatorConfig fields (e.g. {"rate_plan": "off"}); ports, leads and redirect_uri are ours.
    emulator_settings: Mapping[str, Any] = field(default_factory=dict)
    # Applied last to every function's environment.
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    parameter_overrides: Mapping[str, str] = field(default_factory=dict)
    # Secret values by logical ID; the client secret resource gets the emulator app's secret.
    secret_values: Mapping[str, str] = field(default_factory=dict)
    client_secret_resource: str = "ClientSecret"
    state_file: Path | None = None
    access_log: bool = False

    def ports(self) -> dict[str, int]:
        """Requested port per service (0 = ephemeral); the emulator's only when it runs."""
        ports = {"api": self.api_port, "lambda": self.lambda_port, "aws": self.aws_port}
        if self.emulator:
            ports.update(portal=self.portal_port, oauth=self.oauth_port)
        return ports


def check_ports(ports: Mapping[str, int], host: str = HOST) -> None:
    """Fail fast, before anything starts, when a fixed port is taken or listed twice."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port == 0:
            continue
        if not 0 < port < 65536:
            raise PortInUseError(f"port {port} ({name}) is not a valid TCP port")
        if port in seen:
            raise PortInUseError(f"port {port} is configured for both {seen[port]} and {name}")
        seen[port] = name
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the servers themselves do, so a port with only TIME_WAIT leftovers counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno in {errno.EADDRINUSE, errno.EACCES}:
                    raise PortInUseError(f"port {port} ({name}) is already in use") from None
                raise
