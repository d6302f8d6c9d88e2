"""Read samconfig.toml the way the operator helpers need it: an environment's deploy settings."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_SAMCONFIG = Path(__file__).resolve().parents[2] / "samconfig.toml"


class SamConfigError(ValueError):
    """samconfig.toml lacks the environment or a setting the helper needs."""


def deploy_parameters(env: str, path: Path = DEFAULT_SAMCONFIG) -> dict[str, Any]:
    """The `[<env>.deploy.parameters]` table over `[default.global.parameters]`, as SAM merges them."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SamConfigError(f"{path} does not exist") from None
    section = document.get(env, {}).get("deploy", {}).get("parameters")
    if not isinstance(section, dict):
        raise SamConfigError(f"{path} has no [{env}.deploy.parameters]")
    shared = document.get("default", {}).get("global", {}).get("parameters") or {}
    return {**shared, **section}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parameter_overrides(env: str, path: Path = DEFAULT_SAMCONFIG) -> dict[str, str]:
    """The environment's `parameter_overrides` (list or space-separated string) as {name: value}."""
    raw = deploy_parameters(env, path).get("parameter_overrides") or []
    entries = shlex.split(raw) if isinstance(raw, str) else [str(item) for item in raw]
    overrides: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise SamConfigError(f"parameter override {entry!r} in {path} is not Name=Value")
        overrides[name.strip()] = _unquote(value.strip())
    return overrides


def stack_and_region(env: str, path: Path = DEFAULT_SAMCONFIG) -> tuple[str, str | None]:
    """The environment's CloudFormation stack name and region (None: the AWS default applies)."""
    parameters = deploy_parameters(env, path)
    stack = parameters.get("stack_name")
    if not stack:
        raise SamConfigError(f"{path} sets no stack_name for {env}")
    region = parameters.get("region")
    return str(stack), str(region) if region else None
