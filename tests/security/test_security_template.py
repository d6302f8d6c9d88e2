"""template.yaml checks the template's own tests (tests/infra/template) do not make: who may call in
(principals, function URLs, permissions, routes), that alarmed metrics are ones the code emits, and
that logging cannot be turned into a payload dump by configuration."""

from __future__ import annotations

import re
from typing import Any

import pytest

from operator_tools.cfn_yaml import load_template, resources_of_type
from tests.support.servers import REPO_ROOT
from tests.support.template_support import HANDLERS, as_list, policy_statements

REPO = REPO_ROOT
PACKAGE = REPO / "functions" / "b24connector"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """template.yaml in its JSON form."""
    return load_template(REPO / "template.yaml")


def _principals(statement_body: dict[str, Any]) -> list[Any]:
    principal = statement_body.get("Principal")
    if principal in (None, "*"):
        return [principal]
    return [v for values in principal.values() for v in as_list(values)]


def test_no_allow_statement_trusts_any_principal(template: dict[str, Any]) -> None:
    for statement in policy_statements(template):
        if not statement.allow or "Principal" not in statement.body:
            continue  # identity policies have no principal
        principals = _principals(statement.body)
        assert "*" not in principals, (statement.resource_id, statement.sid)
        # A service principal is fenced in by a condition (e.g. the log-group encryption context)
        if "Service" in statement.body["Principal"]:
            assert statement.body.get("Condition"), (statement.resource_id, statement.sid)


def test_functions_are_reachable_only_through_their_declared_events(template: dict[str, Any]) -> None:
    assert resources_of_type(template, "AWS::Lambda::Url") == {}
    for function_id in HANDLERS:
        props = template["Resources"][function_id]["Properties"]
        assert "FunctionUrlConfig" not in props, function_id
    for permission_id, permission in resources_of_type(template, "AWS::Lambda::Permission").items():
        props = permission["Properties"]
        assert props["Principal"] != "*", permission_id
        assert "SourceArn" in props or "SourceAccount" in props, permission_id
    routes = set()
    for function_id in HANDLERS:
        for event in (template["Resources"][function_id]["Properties"].get("Events") or {}).values():
            if event["Type"] == "HttpApi":
                routes.add((event["Properties"]["Method"].upper(), event["Properties"]["Path"]))
    # Exactly the four public routes: no catch-all ($default, ANY, {proxy+}) that would widen the surface
    assert routes == {("GET", "/authorize"), ("GET", "/callback"), ("POST", "/install"), ("POST", "/events")}


def test_the_http_api_allows_no_cross_origin_reads(template: dict[str, Any]) -> None:
    (api,) = list(resources_of_type(template, "AWS::Serverless::HttpApi").values())
    cors = api["Properties"].get("CorsConfiguration")
    if cors:
        assert "*" not in as_list(cors.get("AllowOrigins", []))
        assert not cors.get("AllowCredentials", False)


def _alarmed_connector_metrics(template: dict[str, Any]) -> set[str]:
    names = set()
    for alarm in resources_of_type(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        for query in props.get("Metrics", []):
            expression = query.get("Expression", {})
            text = expression.get("Fn::Sub", "") if isinstance(expression, dict) else str(expression)
            names.update(re.findall(r"SUM\((\w+)\)", text))
        if props.get("Namespace") == {"Ref": "MetricsNamespace"}:
            names.add(props["MetricName"])
    return names


def test_every_alarmed_connector_metric_is_emitted_by_the_code(template: dict[str, Any]) -> None:
    alarmed = _alarmed_connector_metrics(template)
    assert "PortalNeedsReauth" in alarmed
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    for metric in alarmed:
        assert f'"{metric}"' in source, f"{metric} is alarmed but never emitted"


def test_logging_configuration_cannot_dump_payloads(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    # DEBUG only by an explicit parameter, never the default
    level = env.get("POWERTOOLS_LOG_LEVEL")
    if isinstance(level, dict) and "Ref" in level:
        level = template["Parameters"][level["Ref"]].get("Default")
    assert str(level).upper() in {"INFO", "WARNING", "ERROR"}, level
    for function_id in HANDLERS:
        logging_config = template["Resources"][function_id]["Properties"].get("LoggingConfig") or template[
            "Globals"
        ]["Function"].get("LoggingConfig", {})
        # Lambda's own application log level would lower the root logger for every library
        assert str(logging_config.get("ApplicationLogLevel", "INFO")).upper() != "DEBUG", function_id
        assert str(logging_config.get("SystemLogLevel", "INFO")).upper() != "DEBUG", function_id
