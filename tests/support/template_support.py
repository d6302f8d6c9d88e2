"""Walkers shared by the template tests: the repository paths, the handler contract, IAM statements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from operator_tools.cfn_yaml import resources_of_type
from tests.support.servers import REPO_ROOT

# Values for parameters without a default (the operator passes them at deploy time).
DEPLOY_TIME_VALUES = {"Bitrix24ClientId": "local.65f0c0c0c0c0c0.12345678"}

TEMPLATE_PATH = REPO_ROOT / "template.yaml"

# The contract in docs/architecture.md#functions-queues-tables: logical ID -> handler.
HANDLERS = {
    "AuthorizeFunction": "b24connector.handlers.authorize.handler",
    "CallbackFunction": "b24connector.handlers.callback.handler",
    "InstallFunction": "b24connector.handlers.install.handler",
    "RefreshFunction": "b24connector.handlers.refresh_sweep.handler",
    "RefreshWorkerFunction": "b24connector.handlers.refresh_worker.handler",
    "LeadsFunction": "b24connector.handlers.leads.handler",
    "TokenRescueFunction": "b24connector.handlers.token_rescue.handler",
    "LifecycleFunction": "b24connector.handlers.lifecycle.handler",
    "PublisherFunction": "b24connector.handlers.publisher.handler",
}

# Variables only one function sets, and why: EVENTS_URL names the HTTP API, whose routes depend on the
# HTTP functions, so only a function outside the API may carry it (anything else is a dependency cycle).
# LEADS_FUNCTION_NAME likewise: LeadsFunction cannot name itself in the shared environment.
FUNCTION_ONLY_VARIABLES = {"EVENTS_URL": "LifecycleFunction", "LEADS_FUNCTION_NAME": "PublisherFunction"}


@dataclass(frozen=True)
class Statement:
    """One policy statement with where it was found."""

    resource_id: str  # logical ID of the role / key / queue policy holding it
    document: str  # e.g. "Policies[0]", "KeyPolicy"
    body: dict[str, Any]

    @property
    def sid(self) -> str:
        """The statement's Sid ("" when it has none)."""
        return str(self.body.get("Sid", ""))

    @property
    def allow(self) -> bool:
        """True for an Allow statement."""
        return self.body.get("Effect") == "Allow"

    @property
    def actions(self) -> list[str]:
        """Action as a list."""
        return as_list(self.body.get("Action"))

    @property
    def resources(self) -> list[Any]:
        """Resource as a list (literals or intrinsic maps)."""
        return as_list(self.body.get("Resource"))


def as_list(value: Any) -> list[Any]:
    """A scalar as a one-element list; a list as itself; None as []."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def policy_statements(template: dict[str, Any]) -> Iterator[Statement]:
    """Every statement of every identity, key and queue policy in the template (trust policies excluded)."""
    for role_id, role in resources_of_type(template, "AWS::IAM::Role").items():
        for index, policy in enumerate(role["Properties"].get("Policies", [])):
            for body in policy["PolicyDocument"]["Statement"]:
                yield Statement(role_id, f"Policies[{index}]", body)
    for key_id, key in resources_of_type(template, "AWS::KMS::Key").items():
        for body in key["Properties"]["KeyPolicy"]["Statement"]:
            yield Statement(key_id, "KeyPolicy", body)
    for policy_id, policy in resources_of_type(template, "AWS::SQS::QueuePolicy").items():
        for body in policy["Properties"]["PolicyDocument"]["Statement"]:
            yield Statement(policy_id, "PolicyDocument", body)


def role_of(template: dict[str, Any], function_id: str) -> str:
    """The logical ID of the role a function runs as (it must be a GetAtt <Role>.Arn)."""
    role = template["Resources"][function_id]["Properties"]["Role"]
    assert isinstance(role, dict), f"{function_id}: Role must reference a role in the template"
    assert list(role) == ["Fn::GetAtt"], f"{function_id}: Role must be !GetAtt <Role>.Arn"
    assert role["Fn::GetAtt"][1] == "Arn"
    return str(role["Fn::GetAtt"][0])


def role_statements(template: dict[str, Any], role_id: str) -> list[Statement]:
    """The Allow statements of one role's inline policies."""
    return [s for s in policy_statements(template) if s.resource_id == role_id and s.allow]


def getatt(logical_id: str, attribute: str = "Arn") -> dict[str, list[str]]:
    """The JSON form of !GetAtt logical_id.attribute."""
    return {"Fn::GetAtt": [logical_id, attribute]}


def deployed_value(template: dict[str, Any], value: Any) -> str:  # noqa: PLR0911 - one return per intrinsic
    """What a variable would hold after deployment: parameter defaults, stand-ins for resource ids."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    (kind, argument), *_ = value.items()
    if kind == "Ref" and argument in template.get("Parameters", {}):
        parameter = template["Parameters"][argument]
        return str(parameter["Default"]) if "Default" in parameter else DEPLOY_TIME_VALUES[argument]
    if kind == "Ref":
        return f"{argument}-physical-id"
    if kind == "Fn::GetAtt":
        return f"arn:aws:service:eu-central-1:123456789012:{argument[0]}"
    if kind == "Fn::Sub" and isinstance(argument, str):
        # ${Resource.Attribute} and ${Resource} stand-ins, as above
        return re.sub(
            r"\$\{([A-Za-z0-9]+)(?:\.([A-Za-z]+))?\}",
            lambda m: f"https://{m.group(1).lower()}.example",
            argument,
        )
    raise AssertionError(f"unexpected intrinsic {kind} in an environment variable")


# Conditions the template tests evaluate, per variant; any other condition (HasAlarmTopic) stays as
# written so tests can check its shape. Each variant is a parameter set an operator may deploy.
EVALUATED_CONDITIONS = ("PkceOn", "HasWorkerReservation")
TEMPLATE_VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "pkce-on": {"PkceEnabled": "true"},
    "worker-reserved": {"WorkerReservedConcurrency": "5"},
}
NO_VALUE = {"Ref": "AWS::NoValue"}


def parameter_value(template: dict[str, Any], name: str, overrides: dict[str, str]) -> str:
    """A parameter's value for a deploy with `overrides` (else its default, else the deploy-time value)."""
    if name in overrides:
        return overrides[name]
    parameter = template["Parameters"][name]
    return str(parameter["Default"]) if "Default" in parameter else DEPLOY_TIME_VALUES[name]


def condition_value(template: dict[str, Any], expression: Any, overrides: dict[str, str]) -> Any:  # noqa: PLR0911 - one return per operator
    """Evaluate a condition expression (Equals/Not/And/Or/Condition over parameters) like CloudFormation."""
    if not isinstance(expression, dict):
        return str(expression).lower() if isinstance(expression, bool) else str(expression)
    (kind, argument), *_ = expression.items()
    if kind == "Ref":
        return parameter_value(template, argument, overrides)
    if kind == "Condition":
        return condition_value(template, template["Conditions"][argument], overrides)
    if kind == "Fn::Equals":
        left, right = (condition_value(template, side, overrides) for side in argument)
        return str(left) == str(right)
    if kind == "Fn::Not":
        return not condition_value(template, argument[0], overrides)
    if kind == "Fn::And":
        return all(condition_value(template, item, overrides) for item in argument)
    if kind == "Fn::Or":
        return any(condition_value(template, item, overrides) for item in argument)
    raise AssertionError(f"unexpected {kind} in a condition")


def resolve_conditions(template: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """The template with EVALUATED_CONDITIONS' Fn::If chosen for `overrides` and AWS::NoValue dropped."""
    chosen = {
        name: bool(condition_value(template, template["Conditions"][name], overrides))
        for name in EVALUATED_CONDITIONS
    }

    dropped = object()  # an Fn::If that chose AWS::NoValue: removed from its list or mapping

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if list(node) == ["Fn::If"] and node["Fn::If"][0] in chosen:
                name, when_true, when_false = node["Fn::If"]
                branch = when_true if chosen[name] else when_false
                return dropped if branch == NO_VALUE else walk(branch)
            return {
                key: value for key, value in ((k, walk(v)) for k, v in node.items()) if value is not dropped
            }
        if isinstance(node, list):
            return [item for item in (walk(value) for value in node) if item is not dropped]
        return node

    resolved: dict[str, Any] = walk(template)
    return resolved
