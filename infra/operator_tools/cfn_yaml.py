"""Read template.yaml with CloudFormation's short-form tags, and derive what tests and tools need from it.

The loader turns `!Ref X` into `{"Ref": "X"}`, `!GetAtt A.B` into `{"Fn::GetAtt": ["A", "B"]}` and
every other `!Fn` tag into `{"Fn::Fn": ...}`, i.e. the template's JSON form, so callers never see
YAML tags. Unquoted dates stay strings, as CloudFormation reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# Short-form tag -> long-form key. `!Ref` and `!Condition` have no `Fn::` prefix.
_TAGS = {
    "Ref": "Ref",
    "Condition": "Condition",
    **{
        name: f"Fn::{name}"
        for name in (
            "And", "Base64", "Cidr", "Equals", "FindInMap", "ForEach", "GetAtt", "GetAZs", "If",
            "ImportValue", "Join", "Length", "Not", "Or", "Select", "Split", "Sub", "ToJsonString",
            "Transform",
        )
    },
}  # fmt: skip

_INTRINSIC_KEYS = frozenset(_TAGS.values())

DYNAMODB_TABLE = "AWS::DynamoDB::Table"
SERVERLESS_FUNCTION = "AWS::Serverless::Function"


class TemplateShapeError(ValueError):
    """The template holds something a helper here cannot turn into a literal value."""


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that knows CloudFormation's intrinsic-function tags."""


# CloudFormation keeps 2012-10-17 a string; PyYAML would make it a date.
_CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _intrinsic(long_name: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if long_name == "Fn::GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {long_name: value}

    return construct


for _short, _long in _TAGS.items():
    _CfnLoader.add_constructor(f"!{_short}", _intrinsic(_long))


def loads_template(text: str) -> dict[str, Any]:
    """Parse CloudFormation/SAM YAML text into its JSON form (intrinsics as `Ref`/`Fn::*` maps)."""
    document = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict):
        raise TemplateShapeError("a template is a mapping at the top level")
    return document


def load_template(path: str | Path) -> dict[str, Any]:
    """Read a CloudFormation/SAM template file into its JSON form."""
    return loads_template(Path(path).read_text(encoding="utf-8"))


def resources_of_type(template: Mapping[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """The template's resources of one type, by logical ID."""
    resources: Mapping[str, Any] = template.get("Resources") or {}
    return {
        logical_id: resource
        for logical_id, resource in resources.items()
        if isinstance(resource, dict) and resource.get("Type") == resource_type
    }


def _literal(value: Any, where: str) -> Any:
    """`value` itself when it holds no intrinsic function; TemplateShapeError otherwise."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in _INTRINSIC_KEYS:
            raise TemplateShapeError(f"{where} must be a literal, not {next(iter(value))}")
        return {key: _literal(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def _key_schema(value: Any, where: str) -> list[dict[str, str]]:
    return [
        {"AttributeName": str(key["AttributeName"]), "KeyType": str(key["KeyType"])}
        for key in _literal(value, where)
    ]


def _projection(value: Any, where: str) -> dict[str, Any]:
    projection = _literal(value, where)
    answer: dict[str, Any] = {"ProjectionType": str(projection["ProjectionType"])}
    if projection.get("NonKeyAttributes"):
        answer["NonKeyAttributes"] = [str(name) for name in projection["NonKeyAttributes"]]
    return answer


def table_definitions(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """boto3 `create_table` kwargs (no TableName) per DynamoDB table, by logical ID.

    Besides KeySchema, AttributeDefinitions, BillingMode, GlobalSecondaryIndexes (and
    ProvisionedThroughput for provisioned tables) and a StreamSpecification when the table has a stream,
    a table with a TTL carries
    `TimeToLiveSpecification` ({"AttributeName", "Enabled"}) in the `update_time_to_live` shape:
    pop it before `create_table(TableName=..., **kwargs)` and apply it afterwards.
    """
    definitions: dict[str, dict[str, Any]] = {}
    for logical_id, resource in resources_of_type(template, DYNAMODB_TABLE).items():
        props: Mapping[str, Any] = resource.get("Properties") or {}
        where = f"{logical_id}.Properties"
        billing = str(_literal(props.get("BillingMode", "PROVISIONED"), f"{where}.BillingMode"))
        kwargs: dict[str, Any] = {
            "KeySchema": _key_schema(props["KeySchema"], f"{where}.KeySchema"),
            "AttributeDefinitions": [
                {"AttributeName": str(a["AttributeName"]), "AttributeType": str(a["AttributeType"])}
                for a in _literal(props["AttributeDefinitions"], f"{where}.AttributeDefinitions")
            ],
            "BillingMode": billing,
        }
        if billing == "PROVISIONED":
            kwargs["ProvisionedThroughput"] = _throughput(props, where)
        indexes = []
        for index in _literal(props.get("GlobalSecondaryIndexes") or [], f"{where}.GlobalSecondaryIndexes"):
            gsi: dict[str, Any] = {
                "IndexName": str(index["IndexName"]),
                "KeySchema": _key_schema(index["KeySchema"], f"{where}.{index['IndexName']}"),
                "Projection": _projection(index["Projection"], f"{where}.{index['IndexName']}"),
            }
            if billing == "PROVISIONED":
                gsi["ProvisionedThroughput"] = _throughput(index, f"{where}.{index['IndexName']}")
            indexes.append(gsi)
        if indexes:
            kwargs["GlobalSecondaryIndexes"] = indexes
        ttl = _literal(props.get("TimeToLiveSpecification"), f"{where}.TimeToLiveSpecification")
        if ttl and ttl.get("Enabled") in {True, "true", "True"}:
            kwargs["TimeToLiveSpecification"] = {"AttributeName": str(ttl["AttributeName"]), "Enabled": True}
        stream = _literal(props.get("StreamSpecification"), f"{where}.StreamSpecification")
        if stream:
            # create_table's shape (CloudFormation's has no StreamEnabled: a specification means on).
            kwargs["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": str(stream["StreamViewType"]),
            }
        definitions[logical_id] = kwargs
    return definitions


def _throughput(props: Mapping[str, Any], where: str) -> dict[str, int]:
    throughput = _literal(props.get("ProvisionedThroughput"), f"{where}.ProvisionedThroughput")
    if not throughput:
        raise TemplateShapeError(f"{where}: a provisioned table or index needs ProvisionedThroughput")
    return {
        "ReadCapacityUnits": int(throughput["ReadCapacityUnits"]),
        "WriteCapacityUnits": int(throughput["WriteCapacityUnits"]),
    }


def _function_globals(template: Mapping[str, Any]) -> Mapping[str, Any]:
    globals_: Mapping[str, Any] = (template.get("Globals") or {}).get("Function") or {}
    return globals_


def function_property(template: Mapping[str, Any], logical_id: str, name: str) -> Any:
    """A Serverless::Function property as SAM applies it: the function's own value, else Globals'."""
    function = resources_of_type(template, SERVERLESS_FUNCTION)[logical_id]
    props: Mapping[str, Any] = function.get("Properties") or {}
    return props[name] if name in props else _function_globals(template).get(name)


def function_handlers(template: Mapping[str, Any]) -> dict[str, str]:
    """Handler string ("package.module.attribute") of every Serverless::Function, by logical ID."""
    return {
        logical_id: str(_literal(function_property(template, logical_id, "Handler"), f"{logical_id}.Handler"))
        for logical_id in resources_of_type(template, SERVERLESS_FUNCTION)
    }


def function_environment(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's environment variables as SAM merges them (Globals, then the function's own).

    Values are returned as written: literals or intrinsic maps such as {"Ref": "PortalsTable"}.
    """
    function = resources_of_type(template, SERVERLESS_FUNCTION)[logical_id]
    own = ((function.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}
    shared = (_function_globals(template).get("Environment") or {}).get("Variables") or {}
    return {**shared, **own}
