"""The template as CloudFormation will see it: SAM-transformed, intrinsics resolved to fake-account ARNs.

Physical names follow CloudFormation's rules where the template sets none (`<stack>-<LogicalId>-<SUFFIX>`),
queue `Ref` is the URL, secret `Ref` the ARN with Secrets Manager's random suffix, log-group `Arn` ends
in `:*`, key `Ref` a key id. The account is fake (123456789012); region, stack name and parameters come
from samconfig.toml's environment, as `make deploy` passes them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_stack.template import ACCOUNT_ID, Resolver, Template
from operator_tools.samconfig import parameter_overrides, stack_and_region

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_PYTHON = REPO_ROOT / ".venv-tools" / "bin" / "python"
TRANSFORM_SCRIPT = Path(__file__).with_name("sam_transform.py")
# The one parameter samconfig cannot hold (deploy_params adds it); its value changes no policy.
PLACEHOLDER_PARAMETERS = {"Bitrix24ClientId": "local.iam-check.app"}

_NAME_PROPERTY = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::IAM::Role": "RoleName",
    "AWS::Scheduler::Schedule": "Name",
    "AWS::KMS::Alias": "AliasName",
    "AWS::Events::EventBus": "Name",
}
# The label CloudFormation would give a table's stream (any fixed value: policies name it by GetAtt).
STREAM_LABEL = "2026-01-01T00:00:00.000"


class StackError(ValueError):
    """The template uses something the check cannot model."""


def transform(template: Path, parameters: Mapping[str, str], region: str, stack_name: str) -> dict[str, Any]:
    """Run SAM's transform offline (samtranslator from .venv-tools) and return the CloudFormation JSON."""
    values = {
        **parameters,
        "AWS::Region": region,
        "AWS::AccountId": ACCOUNT_ID,
        "AWS::StackName": stack_name,
        "AWS::Partition": "aws",
    }
    if not TOOLS_PYTHON.exists():
        raise StackError(
            f"{TOOLS_PYTHON} is missing: run `make tools` (samtranslator comes with the SAM CLI)"
        )
    done = subprocess.run(
        [str(TOOLS_PYTHON), str(TRANSFORM_SCRIPT), str(template), json.dumps(values)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"SAM transform of {template} failed:\n{done.stderr.strip()}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@dataclass(frozen=True, slots=True)
class Role:
    """An IAM role with its identity policies (inline and AWS::IAM::Policy resources attached to it)."""

    logical_id: str
    name: str
    arn: str
    policies: list[dict[str, Any]]  # [{"name", "policy"}]

    def session_arn(self, session: str) -> str:
        """The assumed-role ARN a service or function acts as (what IAM evaluates)."""
        return f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{self.name}/{session}"


class Stack:
    """The transformed template with every intrinsic resolvable to fake physical names and ARNs."""

    def __init__(self, template: Path, *, env: str = "dev", samconfig: Path | None = None) -> None:
        kwargs = {"path": samconfig} if samconfig is not None else {}
        stack_name, region = stack_and_region(env, **kwargs)
        self.env = env
        self.stack_name = stack_name
        self.region = region or "eu-central-1"
        self.parameters = {**PLACEHOLDER_PARAMETERS, **parameter_overrides(env, **kwargs)}
        self.document = transform(template, self.parameters, self.region, self.stack_name)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(self.document, handle)
        try:
            self.template = Template(Path(handle.name), self.parameters)
        finally:
            Path(handle.name).unlink()
        self.resources: dict[str, dict[str, Any]] = self.template.resources
        self.resolver = Resolver(
            self.template,
            region=self.region,
            stack_name=self.stack_name,
            ref=self._ref,
            get_att=self._get_att,
        )
        self._by_value: dict[str, str] = {}
        for logical_id in self.resources:
            for value in (
                self._ref(logical_id),
                self._get_att(logical_id, "Arn"),
                self._get_att(logical_id, "StreamArn"),
            ):
                if value and not value.startswith(f"{logical_id}."):
                    self._by_value.setdefault(value, logical_id)

    # ------------------------------------------------------------ physical names
    def type_of(self, logical_id: str) -> str:
        """The CloudFormation type of a resource."""
        return str(self.resources[logical_id].get("Type"))

    def props(self, logical_id: str) -> dict[str, Any]:
        """The resource's Properties with every intrinsic resolved."""
        resolved = self.resolver.resolve(self.resources[logical_id].get("Properties") or {})
        return resolved if isinstance(resolved, dict) else {}

    def name(self, logical_id: str) -> str:
        """The physical name: the template's, or the one CloudFormation generates."""
        kind = self.type_of(logical_id)
        prop = _NAME_PROPERTY.get(kind)
        explicit = (self.resources[logical_id].get("Properties") or {}).get(prop) if prop else None
        if explicit is not None:
            return str(self.resolver.resolve(explicit))
        suffix = hashlib.sha256(f"{self.stack_name}/{logical_id}".encode()).hexdigest()[:12].upper()
        return f"{self.stack_name}-{logical_id}-{suffix}"

    def _key_id(self, logical_id: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.stack_name}/{logical_id}"))

    def _ref(self, logical_id: str) -> str | None:
        kind = self.type_of(logical_id)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT_ID}/{self.name(logical_id)}"
        if kind == "AWS::SecretsManager::Secret":
            return self._get_att(logical_id, "Arn")
        if kind == "AWS::KMS::Key":
            return self._key_id(logical_id)
        return self.name(logical_id)

    def _get_att(self, logical_id: str, attribute: str) -> str | None:
        kind, r, a = self.type_of(logical_id), self.region, ACCOUNT_ID
        if attribute == "Arn":
            arns = {
                "AWS::DynamoDB::Table": lambda: f"arn:aws:dynamodb:{r}:{a}:table/{self.name(logical_id)}",
                "AWS::SQS::Queue": lambda: f"arn:aws:sqs:{r}:{a}:{self.name(logical_id)}",
                "AWS::KMS::Key": lambda: f"arn:aws:kms:{r}:{a}:key/{self._key_id(logical_id)}",
                "AWS::Logs::LogGroup": lambda: f"arn:aws:logs:{r}:{a}:log-group:{self.name(logical_id)}:*",
                "AWS::Lambda::Function": lambda: f"arn:aws:lambda:{r}:{a}:function:{self.name(logical_id)}",
                "AWS::IAM::Role": lambda: f"arn:aws:iam::{a}:role/{self.name(logical_id)}",
                # Secrets Manager appends six random characters to the name.
                "AWS::SecretsManager::Secret": lambda: (
                    f"arn:aws:secretsmanager:{r}:{a}:secret:{self.name(logical_id)}-AbCdEf"
                ),
                "AWS::Scheduler::Schedule": lambda: (
                    f"arn:aws:scheduler:{r}:{a}:schedule/default/{self.name(logical_id)}"
                ),
                "AWS::Events::EventBus": lambda: f"arn:aws:events:{r}:{a}:event-bus/{self.name(logical_id)}",
            }
            if kind in arns:
                return arns[kind]()
        streams = "StreamSpecification" in (self.resources[logical_id].get("Properties") or {})
        if kind == "AWS::DynamoDB::Table" and attribute == "StreamArn" and streams:
            return f"arn:aws:dynamodb:{r}:{a}:table/{self.name(logical_id)}/stream/{STREAM_LABEL}"
        if kind == "AWS::SQS::Queue" and attribute == "QueueName":
            return self.name(logical_id)
        if kind == "AWS::SQS::Queue" and attribute == "QueueUrl":
            return self._ref(logical_id)
        if kind == "AWS::KMS::Key" and attribute == "KeyId":
            return self._key_id(logical_id)
        # Attributes no policy of ours is built from (API ids, stream ARNs): a recognisable stand-in.
        return f"{logical_id}.{attribute}"

    # ------------------------------------------------------------ lookups
    def logical_for(self, value: str) -> str | None:
        """The resource whose Ref or Arn is exactly `value`."""
        return self._by_value.get(value)

    def arn(self, logical_id: str) -> str:
        """The ARN IAM evaluates for the resource (log groups without the `:*` suffix)."""
        value = self._get_att(logical_id, "Arn") or ""
        return value.removesuffix(":*")

    def label(self, arn_or_pattern: str) -> str:
        """A resource as people read it: logical ID (plus /index/X), else the pattern itself."""
        if arn_or_pattern in self._by_value:
            return self._by_value[arn_or_pattern]
        head, sep, tail = arn_or_pattern.partition("/index/")
        if sep and head in self._by_value:
            return f"{self._by_value[head]}/index/{tail}"
        return arn_or_pattern

    def of_type(self, *types: str) -> Iterator[str]:
        """Logical IDs of the resources of the given types, in template order."""
        for logical_id, resource in self.resources.items():
            if resource.get("Type") in types:
                yield logical_id

    def logical_from(self, value: Any) -> str | None:
        """The logical ID a resolved Ref/Arn value (or an unresolved Ref/GetAtt) points at."""
        if isinstance(value, dict):
            if "Ref" in value:
                return str(value["Ref"])
            if "Fn::GetAtt" in value:
                target = value["Fn::GetAtt"]
                return str(target[0] if isinstance(target, list) else str(target).split(".", 1)[0])
            return None
        return self.logical_for(str(value)) if value is not None else None

    def roles(self) -> dict[str, Role]:
        """Every AWS::IAM::Role with its inline policies and the AWS::IAM::Policy resources naming it."""
        roles: dict[str, Role] = {}
        for logical_id in self.of_type("AWS::IAM::Role"):
            props = self.props(logical_id)
            if props.get("ManagedPolicyArns") or props.get("PermissionsBoundary"):
                raise StackError(
                    f"{logical_id}: managed policies/boundaries are not modelled by the IAM check"
                )
            policies = [
                {"name": str(p["PolicyName"]), "policy": p["PolicyDocument"]}
                for p in props.get("Policies") or []
            ]
            roles[logical_id] = Role(logical_id, self.name(logical_id), self.arn(logical_id), policies)
        for logical_id in self.of_type("AWS::IAM::Policy", "AWS::IAM::RolePolicy"):
            raw = self.resources[logical_id].get("Properties") or {}
            props = self.props(logical_id)
            targets = raw.get("Roles") or ([raw["RoleName"]] if "RoleName" in raw else [])
            for target in targets:
                role = self.logical_from(target)
                if role not in roles:
                    raise StackError(f"{logical_id}: attached to a role outside the template")
                roles[role].policies.append(
                    {"name": str(props["PolicyName"]), "policy": props["PolicyDocument"]}
                )
        return roles

    def key_policy(self, key_logical_id: str) -> dict[str, Any]:
        """The KMS key policy (KMS always has one: a key without one gets the default)."""
        policy = self.props(key_logical_id).get("KeyPolicy")
        if not isinstance(policy, dict):
            raise StackError(f"{key_logical_id}: no KeyPolicy; the default policy is not modelled")
        return policy

    def queue_policy(self, queue_logical_id: str) -> dict[str, Any] | None:
        """The one AWS::SQS::QueuePolicy covering the queue (SQS keeps one policy per queue), if any."""
        url = self._ref(queue_logical_id)
        found = [
            self.props(p)["PolicyDocument"]
            for p in self.of_type("AWS::SQS::QueuePolicy")
            if url in (self.props(p).get("Queues") or [])
        ]
        if len(found) > 1:
            raise StackError(f"{queue_logical_id}: more than one QueuePolicy; SQS keeps only the last")
        return found[0] if found else None
