"""Every variable load_settings reads is set for every function, nothing set is unused, every value parses."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from aws_lambda_powertools.shared import constants as powertools_constants

from b24connector import settings as settings_module
from b24connector.settings import load_settings
from operator_tools.cfn_yaml import function_environment, resources_of_type
from tests.support.template_support import FUNCTION_ONLY_VARIABLES, HANDLERS, REPO_ROOT, deployed_value

SETTINGS_SOURCE = REPO_ROOT / "functions" / "b24connector" / "settings.py"


def settings_variable_names() -> set[str]:
    """The names settings.py reads through `read.get(...)` / `read.required(...)`, found with ast."""
    tree = ast.parse(SETTINGS_SOURCE.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"get", "required"}
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "read"
        ):
            first = node.args[0]
            assert isinstance(first, ast.Constant), "settings must read variables by literal name"
            names.add(str(first.value))
    return names


def powertools_variable_names() -> set[str]:
    """Every environment variable name Powertools declares in its shared constants."""
    return {
        value
        for name, value in vars(powertools_constants).items()
        if name.endswith("_ENV") and isinstance(value, str) and value.startswith("POWERTOOLS_")
    }


class RecordingEnv(Mapping[str, str]):
    """A read-only environment that remembers which names were looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Record the lookup, then answer like dict.get."""
        self.read.add(key)
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_the_ast_scan_finds_the_settings_variables() -> None:
    # A scan that found nothing would make the next tests pass vacuously.
    names = settings_variable_names()
    assert {"BITRIX24_CLIENT_ID", "PORTALS_TABLE", "TOKEN_KEY_ID", "LOCAL_MODE"} <= names
    assert len(names) >= 25


@pytest.mark.parametrize("function_id", sorted(HANDLERS))
def test_every_settings_variable_is_set_and_nothing_else(template: dict[str, Any], function_id: str) -> None:
    env = function_environment(template, function_id)
    powertools = {name for name in env if name.startswith("POWERTOOLS_")}
    # Then the function gets exactly what load_settings reads, plus Powertools' own configuration
    elsewhere = {name for name, owner in FUNCTION_ONLY_VARIABLES.items() if owner != function_id}
    assert set(env) - powertools == settings_variable_names() - elsewhere
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"} <= powertools
    # And every Powertools variable is one Powertools actually reads
    assert powertools <= powertools_variable_names()


@pytest.mark.parametrize("function_id", sorted(HANDLERS))
def test_the_deployed_environment_parses_and_is_read_in_full(
    template: dict[str, Any], function_id: str
) -> None:
    # Given the environment as it would be after a deploy with default parameters
    values = {
        name: deployed_value(template, value)
        for name, value in function_environment(template, function_id).items()
    }
    recording = RecordingEnv(values)
    # When the settings are loaded from it
    settings = load_settings(recording)
    # Then every value parses, and every non-Powertools variable set was looked up
    assert {name for name in values if not name.startswith("POWERTOOLS_")} <= recording.read
    assert settings.local_mode is False
    assert settings.pkce_enabled is False
    assert settings.refresh_after_days == 21
    assert settings.oauth_servers == settings_module.DEFAULT_OAUTH_SERVERS
    assert settings.allowed_portal_suffixes == settings_module.DEFAULT_PORTAL_SUFFIXES


def test_tracing_and_logging_never_capture_payloads(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
    assert env["POWERTOOLS_LOGGER_LOG_EVENT"] == "false"
    assert env["LOCAL_MODE"] == "false"


def test_no_function_overrides_the_shared_environment(template: dict[str, Any]) -> None:
    # One environment for all (load_settings reads all of it everywhere); a per-function override would drift.
    for function_id, function in resources_of_type(template, "AWS::Serverless::Function").items():
        own = set(function["Properties"].get("Environment", {}).get("Variables", {}))
        assert own == {name for name, owner in FUNCTION_ONLY_VARIABLES.items() if owner == function_id}, (
            function_id
        )


def _attributes_read_by_the_code() -> set[str]:
    """Every `x.name` attribute read anywhere in functions/ (settings.py's own checks count too)."""
    names: set[str] = set()
    for path in (REPO_ROOT / "functions").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return names


def test_every_setting_governs_something() -> None:
    # Issue 12 point 9: OPERATING_LIMIT_SECONDS and APP_ENV were documented, set and parsed, and no code
    # read them. A setting no code reads is a promise nothing keeps.
    read = _attributes_read_by_the_code()
    fields = set(settings_module.Settings.__dataclass_fields__)
    assert fields - read == set()


def test_a_production_stack_refuses_local_mode(template: dict[str, Any]) -> None:
    values = {
        name: deployed_value(template, value)
        for name, value in function_environment(template, "LeadsFunction").items()
    }
    assert load_settings({**values, "APP_ENV": "prod"}).app_env == "prod"
    with pytest.raises(settings_module.ConfigError, match="LOCAL_MODE"):
        load_settings({**values, "APP_ENV": "prod", "LOCAL_MODE": "true"})
    assert load_settings({**values, "APP_ENV": "dev", "LOCAL_MODE": "true"}).local_mode is True
