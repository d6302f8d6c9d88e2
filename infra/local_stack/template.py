"""Reads what the local stack needs from template.yaml: functions, routes, event sources, intrinsics."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCOUNT_ID = "123456789012"  # moto's default account, so ARNs we compute match the ones moto returns
_NO_VALUE = object()
_SUB_VARIABLE = re.compile(r"\$\{([^!}][^}]*)\}")


# Intrinsics that evaluate a condition (or pick a value by one): _condition_intrinsic.
_CONDITION_FUNCTIONS = frozenset({"Fn::If", "Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition"})


class TemplateError(ValueError):
    """The template uses something the local stack cannot reproduce."""


@dataclass(frozen=True, slots=True)
class Route:
    """One HttpApi route: method ("ANY" allowed) and path ("$default" for the catch-all)."""

    method: str
    path: str
    function: str

    @property
    def route_key(self) -> str:
        """The API Gateway route key, e.g. "GET /authorize"."""
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class SqsSource:
    """An SQS event source mapping: queue -> function."""

    queue: str  # logical ID
    function: str
    batch_size: int
    report_batch_item_failures: bool
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class StreamSource:
    """A DynamoDB stream event source mapping: table's stream -> function."""

    table: str  # logical ID
    function: str
    batch_size: int
    report_batch_item_failures: bool
    filters: tuple[dict[str, Any], ...] = ()  # FilterCriteria patterns (a record passes if any matches)
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Schedule:
    """An EventBridge Scheduler (ScheduleV2) or Schedule event on a function."""

    name: str
    function: str
    expression: Any  # as written (may be an intrinsic); informational locally
    input: Any  # as written: None, a JSON string, or an intrinsic resolving to one
    enabled: bool = True


@dataclass(slots=True)
class FunctionDef:
    """A template function with its properties merged over Globals.Function (SAM's rules)."""

    logical_id: str
    properties: dict[str, Any]
    routes: list[Route] = field(default_factory=list)
    sqs_sources: list[SqsSource] = field(default_factory=list)
    stream_sources: list[StreamSource] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)


def _merge_globals(global_props: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    # SAM: maps are merged (the function wins), lists are concatenated, scalars are replaced.
    merged: dict[str, Any] = copy.deepcopy(dict(global_props))
    for key, value in own.items():
        base = merged.get(key)
        if isinstance(base, dict) and isinstance(value, dict) and not _is_intrinsic(value):
            merged[key] = _merge_globals(base, value)
        elif isinstance(base, list) and isinstance(value, list):
            merged[key] = base + copy.deepcopy(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_intrinsic(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _INTRINSICS


_INTRINSICS = {
    "Ref",
    "Fn::GetAtt",
    "Fn::Sub",
    "Fn::If",
    "Fn::Join",
    "Fn::Select",
    "Fn::Split",
    "Fn::FindInMap",
    "Fn::Equals",
    "Fn::Not",
    "Fn::And",
    "Fn::Or",
    "Fn::Base64",
    "Fn::ImportValue",
    "Fn::GetAZs",
    "Condition",
}


class Template:
    """The parsed template, with SAM functions and their events, plus an intrinsic-function resolver."""

    def __init__(self, path: Path, parameter_overrides: Mapping[str, str] | None = None) -> None:
        from operator_tools.cfn_yaml import load_template

        self.path = path.resolve()
        self.base_dir = self.path.parent
        self.document: dict[str, Any] = load_template(self.path)
        self.resources: dict[str, dict[str, Any]] = dict(self.document.get("Resources") or {})
        self.parameters = self._parameter_values(parameter_overrides or {})
        self.functions = self._functions()

    def _parameter_values(self, overrides: Mapping[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, spec in (self.document.get("Parameters") or {}).items():
            if name in overrides:
                values[name] = overrides[name]
            elif "Default" in spec:
                default = spec["Default"]
                values[name] = default if isinstance(default, str | list) else str(default)
            else:
                values[name] = ""
            is_list = (
                str(spec.get("Type", "")).startswith("List<") or spec.get("Type") == "CommaDelimitedList"
            )
            if is_list and isinstance(values[name], str):
                values[name] = [part.strip() for part in values[name].split(",")] if values[name] else []
        unknown = set(overrides) - set(values)
        if unknown:
            raise TemplateError(f"parameter overrides name unknown parameters: {sorted(unknown)}")
        return values

    def resources_of_type(self, *types: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(logical ID, resource) for every resource of one of the given types, in template order."""
        for logical_id, resource in self.resources.items():
            if resource.get("Type") in types:
                yield logical_id, resource

    def _functions(self) -> dict[str, FunctionDef]:
        global_props = (self.document.get("Globals") or {}).get("Function") or {}
        functions: dict[str, FunctionDef] = {}
        for logical_id, resource in self.resources_of_type("AWS::Serverless::Function"):
            props = _merge_globals(global_props, resource.get("Properties") or {})
            fn = FunctionDef(logical_id, props)
            for event_name, event in (props.get("Events") or {}).items():
                self._add_event(fn, event_name, event)
            functions[logical_id] = fn
        return functions

    def _add_event(self, fn: FunctionDef, name: str, event: Mapping[str, Any]) -> None:
        kind = event.get("Type")
        props = event.get("Properties") or {}
        if kind == "HttpApi":
            path = props.get("Path")
            method = str(props.get("Method") or "ANY").upper()
            fn.routes.append(Route("ANY" if method in {"ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD"} else method,
                                   str(path) if path else "$default", fn.logical_id))  # fmt: skip
        elif kind == "SQS":
            queue = _logical_target(props.get("Queue"))
            if queue is None:
                raise TemplateError(
                    f"{fn.logical_id}.{name}: SQS Queue must reference a queue in the template"
                )
            types = props.get("FunctionResponseTypes") or []
            fn.sqs_sources.append(
                SqsSource(
                    queue=queue,
                    function=fn.logical_id,
                    batch_size=int(props.get("BatchSize", 10)),
                    report_batch_item_failures="ReportBatchItemFailures" in types,
                    enabled=bool(props.get("Enabled", True)),
                )
            )
        elif kind == "DynamoDB":
            table = _logical_target(props.get("Stream"))
            if table is None:
                raise TemplateError(
                    f"{fn.logical_id}.{name}: Stream must be a table's StreamArn in the template"
                )
            patterns = [
                json.loads(f["Pattern"]) if isinstance(f.get("Pattern"), str) else f.get("Pattern")
                for f in (props.get("FilterCriteria") or {}).get("Filters") or []
            ]
            fn.stream_sources.append(
                StreamSource(
                    table=table,
                    function=fn.logical_id,
                    batch_size=int(props.get("BatchSize", 100)),
                    report_batch_item_failures="ReportBatchItemFailures"
                    in (props.get("FunctionResponseTypes") or []),
                    filters=tuple(p for p in patterns if isinstance(p, dict)),
                    enabled=bool(props.get("Enabled", True)),
                )
            )
        elif kind in {"ScheduleV2", "Schedule"}:
            state = props.get("State")
            enabled = props.get("Enabled", True) if state is None else state == "ENABLED"
            schedule_name = (
                props.get("Name") if isinstance(props.get("Name"), str) else f"{fn.logical_id}{name}"
            )
            fn.schedules.append(
                Schedule(
                    name=str(schedule_name),
                    function=fn.logical_id,
                    expression=props.get("ScheduleExpression"),
                    input=props.get("Input"),
                    enabled=bool(enabled),
                )
            )

    @property
    def routes(self) -> list[Route]:
        """Every HttpApi route of every function."""
        return [route for fn in self.functions.values() for route in fn.routes]

    @property
    def sqs_sources(self) -> list[SqsSource]:
        """Every SQS event source of every function."""
        return [source for fn in self.functions.values() for source in fn.sqs_sources]

    @property
    def stream_sources(self) -> list[StreamSource]:
        """Every DynamoDB stream event source of every function."""
        return [source for fn in self.functions.values() for source in fn.stream_sources]

    def code_dir(self, fn: FunctionDef) -> Path:
        """The function's CodeUri as a directory (relative to the template, as SAM resolves it)."""
        code_uri = fn.properties.get("CodeUri")
        if not isinstance(code_uri, str):
            raise TemplateError(f"{fn.logical_id}: CodeUri must be a local path for the local stack")
        directory = (self.base_dir / code_uri).resolve()
        if not directory.is_dir():
            raise TemplateError(f"{fn.logical_id}: CodeUri {code_uri!r} is not a directory")
        return directory


def _logical_target(value: Any) -> str | None:
    """The logical ID behind a Ref or GetAtt (e.g. the queue of an SQS event)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else str(target).split(".", 1)[0])
    return None


class Resolver:
    """Evaluates intrinsic functions against the local physical resources."""

    def __init__(
        self,
        template: Template,
        *,
        region: str,
        stack_name: str,
        ref: Callable[[str], str | None],
        get_att: Callable[[str, str], str | None],
    ) -> None:
        self.template = template
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack_name}/local",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": _NO_VALUE,
        }
        self._ref = ref
        self._get_att = get_att
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        """Evaluate a named condition of the template's Conditions section."""
        if name not in self._conditions:
            spec = (self.template.document.get("Conditions") or {}).get(name)
            if spec is None:
                raise TemplateError(f"unknown condition {name}")
            self._conditions[name] = bool(self.resolve(spec))
        return self._conditions[name]

    def resolve(self, value: Any) -> Any:
        """The value with every intrinsic function evaluated; AWS::NoValue entries dropped."""
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if _is_intrinsic(value):
            name, argument = next(iter(value.items()))
            return self._intrinsic(name, argument)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not _NO_VALUE}

    def resolve_str(self, value: Any) -> str:
        """Resolve to a string as CloudFormation stringifies environment values."""
        resolved = self.resolve(value)
        if isinstance(resolved, bool):
            return "true" if resolved else "false"
        if isinstance(resolved, list | dict):
            return json.dumps(resolved)
        return str(resolved)

    def _intrinsic(self, name: str, arg: Any) -> Any:  # noqa: PLR0911 - one branch per function
        if name == "Ref":
            return self._resolve_ref(str(arg))
        if name == "Fn::GetAtt":
            logical, attribute = arg if isinstance(arg, list) else str(arg).split(".", 1)
            return self._resolve_get_att(str(logical), str(self.resolve(attribute)))
        if name == "Fn::Sub":
            return self._sub(arg)
        if name in _CONDITION_FUNCTIONS:
            return self._condition_intrinsic(name, arg)
        if name == "Fn::Join":
            separator, items = arg
            return str(separator).join(str(item) for item in self.resolve(items))
        if name == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if name == "Fn::Split":
            separator, source = arg
            return str(self.resolve(source)).split(str(separator))
        if name == "Fn::FindInMap":
            mapping, top, second = (self.resolve(part) for part in arg[:3])
            return self.resolve((self.template.document.get("Mappings") or {})[mapping][top][second])
        if name == "Fn::Base64":
            import base64

            return base64.b64encode(str(self.resolve(arg)).encode()).decode()
        if name == "Fn::GetAZs":
            region = self.pseudo["AWS::Region"]
            return [f"{region}a", f"{region}b", f"{region}c"]
        raise TemplateError(f"{name} cannot be evaluated locally")

    def _condition_intrinsic(self, name: str, arg: Any) -> Any:
        """Fn::If and the condition functions (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition)."""
        if name == "Fn::If":
            condition, when_true, when_false = arg
            return self.resolve(when_true if self.condition(str(condition)) else when_false)
        if name == "Fn::Equals":
            left, right = (self.resolve(part) for part in arg)
            return str(left) == str(right)
        if name == "Fn::Not":
            return not self.resolve(arg[0])
        if name == "Fn::And":
            return all(self.resolve(part) for part in arg)
        if name == "Fn::Or":
            return any(self.resolve(part) for part in arg)
        return self.condition(str(arg))

    def _resolve_ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.template.parameters:
            return self.template.parameters[name]
        if name in self.template.resources:
            physical = self._ref(name)
            if physical is None:
                raise TemplateError(f"Ref {name}: no local equivalent")
            return physical
        raise TemplateError(f"Ref to unknown name {name}")

    def _resolve_get_att(self, logical: str, attribute: str) -> str:
        if logical not in self.template.resources:
            raise TemplateError(f"GetAtt {logical}.{attribute}: unknown resource")
        value = self._get_att(logical, attribute)
        if value is None:
            raise TemplateError(f"GetAtt {logical}.{attribute}: no local equivalent")
        return value

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = str(arg[0]), {k: self.resolve(v) for k, v in (arg[1] or {}).items()}
        else:
            text, variables = str(arg), {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name in variables:
                return str(variables[name])
            if "." in name and name.split(".", 1)[0] in self.template.resources:
                logical, attribute = name.split(".", 1)
                return self._resolve_get_att(logical, attribute)
            value = self._resolve_ref(name)
            return ",".join(value) if isinstance(value, list) else str(value)

        # "${!Literal}" is CloudFormation's escape for a literal "${Literal}".
        return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")
