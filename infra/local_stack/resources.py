"""Creates the template's data resources in the moto server and answers Ref/GetAtt for every resource."""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

from local_stack.template import ACCOUNT_ID, Resolver, Template, TemplateError

_log = logging.getLogger("local_stack.resources")

_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "SqsManagedSseEnabled",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
)
_CREATED_TYPES = {
    "AWS::DynamoDB::Table",
    "AWS::KMS::Key",
    "AWS::KMS::Alias",
    "AWS::SecretsManager::Secret",
    "AWS::SQS::Queue",
    "AWS::Events::EventBus",
}


@dataclass(slots=True)
class Physical:
    """A created (or simulated) resource: what Ref answers and its GetAtt attributes."""

    ref: str
    attributes: dict[str, str] = field(default_factory=dict)


def aws_client(service: str, endpoint_url: str, region: str) -> Any:
    """A boto3 client for the moto server with dummy credentials."""
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


class ResourceBuilder:
    """Builds resources on demand in dependency order (a Ref/GetAtt creates its target first)."""

    def __init__(
        self,
        template: Template,
        *,
        endpoint_url: str,
        region: str,
        stack_name: str,
        secret_values: Mapping[str, str],
        function_names: Mapping[str, str],
        api_url: str,
        table_definitions: Mapping[str, dict[str, Any]],
    ) -> None:
        self.template = template
        self.endpoint_url = endpoint_url
        self.region = region
        self.stack_name = stack_name
        self.secret_values = dict(secret_values)
        self.function_names = dict(function_names)
        self.api_url = api_url
        self.table_definitions = table_definitions
        self.physical: dict[str, Physical] = {}
        self._in_progress: set[str] = set()
        self._clients: dict[str, Any] = {}
        self.resolver = Resolver(
            template, region=region, stack_name=stack_name, ref=self._ref, get_att=self._get_att
        )

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.endpoint_url, self.region)
        return self._clients[service]

    def build_all(self) -> dict[str, Physical]:
        """Create every data resource of the template in moto."""
        for logical_id, resource in self.template.resources.items():
            if resource.get("Type") in _CREATED_TYPES and self._included(resource):
                self.ensure(logical_id)
        return self.physical

    def _included(self, resource: Mapping[str, Any]) -> bool:
        condition = resource.get("Condition")
        return condition is None or self.resolver.condition(str(condition))

    def _ref(self, logical_id: str) -> str | None:
        return self.ensure(logical_id).ref

    def _get_att(self, logical_id: str, attribute: str) -> str | None:
        return self.ensure(logical_id).attributes.get(attribute)

    def ensure(self, logical_id: str) -> Physical:
        """The resource's physical identity, creating it first when it is one we create."""
        if logical_id in self.physical:
            return self.physical[logical_id]
        if logical_id in self._in_progress:
            raise TemplateError(f"circular reference through {logical_id}")
        self._in_progress.add(logical_id)
        try:
            resource = self.template.resources[logical_id]
            physical = self._create(logical_id, str(resource.get("Type")), resource.get("Properties") or {})
        finally:
            self._in_progress.discard(logical_id)
        self.physical[logical_id] = physical
        return physical

    def _name(self, logical_id: str, props: Mapping[str, Any], key: str) -> str:
        if key in props:
            return self.resolver.resolve_str(props[key])
        return f"{self.stack_name}-{logical_id}"

    def _create(self, logical_id: str, kind: str, props: Mapping[str, Any]) -> Physical:  # noqa: PLR0911
        if kind == "AWS::DynamoDB::Table":
            return self._table(logical_id, props)
        if kind == "AWS::KMS::Key":
            return self._kms_key(props)
        if kind == "AWS::KMS::Alias":
            return self._kms_alias(props)
        if kind == "AWS::SecretsManager::Secret":
            return self._secret(logical_id, props)
        if kind == "AWS::SQS::Queue":
            return self._queue(logical_id, props)
        if kind == "AWS::Events::EventBus":
            name = self._name(logical_id, props, "Name")
            arn = self._client("events").create_event_bus(Name=name)["EventBusArn"]
            return Physical(name, {"Arn": arn, "Name": name})
        if kind == "AWS::Serverless::Function":
            name = self.function_names.get(logical_id, logical_id)
            arn = f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}"
            return Physical(name, {"Arn": arn})
        if kind in {"AWS::Serverless::HttpApi", "AWS::ApiGatewayV2::Api"}:
            return Physical("local", {"ApiEndpoint": self.api_url, "ApiId": "local"})
        if kind == "AWS::Logs::LogGroup":
            name = self._name(logical_id, props, "LogGroupName")
            return Physical(name, {"Arn": f"arn:aws:logs:{self.region}:{ACCOUNT_ID}:log-group:{name}:*"})
        if kind == "AWS::IAM::Role":
            name = self._name(logical_id, props, "RoleName")
            return Physical(name, {"Arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{name}", "RoleId": name})
        # Anything else has no local behaviour; give it a stable identity so references still resolve.
        name = f"{self.stack_name}-{logical_id}"
        service = kind.split("::")[1].lower() if kind.count("::") >= 2 else "local"
        arn = f"arn:aws:{service}:{self.region}:{ACCOUNT_ID}:{name}"
        return Physical(arn if kind.startswith("AWS::SNS::") else name, {"Arn": arn, "Name": name})

    def _table(self, logical_id: str, props: Mapping[str, Any]) -> Physical:
        if logical_id not in self.table_definitions:
            raise TemplateError(f"{logical_id}: no table definition from operator_tools.cfn_yaml")
        kwargs = dict(self.table_definitions[logical_id])
        ttl = kwargs.pop("TimeToLiveSpecification", None)
        name = self._name(logical_id, props, "TableName")
        kwargs["TableName"] = name
        dynamodb = self._client("dynamodb")
        description = dynamodb.create_table(**kwargs)["TableDescription"]
        if ttl:
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        attributes = {"Arn": description["TableArn"]}
        if description.get("LatestStreamArn"):
            attributes["StreamArn"] = description["LatestStreamArn"]
        return Physical(name, attributes)

    def _kms_key(self, props: Mapping[str, Any]) -> Physical:
        kms = self._client("kms")
        kwargs: dict[str, Any] = {}
        for key in ("Description", "KeyUsage", "KeySpec"):
            if key in props:
                kwargs[key] = self.resolver.resolve_str(props[key])
        metadata = kms.create_key(**kwargs)["KeyMetadata"]
        if self.resolver.resolve(props.get("EnableKeyRotation", False)) in {True, "true", "True"}:
            kms.enable_key_rotation(KeyId=metadata["KeyId"])
        return Physical(metadata["KeyId"], {"Arn": metadata["Arn"], "KeyId": metadata["KeyId"]})

    def _kms_alias(self, props: Mapping[str, Any]) -> Physical:
        alias = self.resolver.resolve_str(props["AliasName"])
        target = self.resolver.resolve_str(props["TargetKeyId"])
        self._client("kms").create_alias(AliasName=alias, TargetKeyId=target)
        return Physical(alias, {"AliasArn": f"arn:aws:kms:{self.region}:{ACCOUNT_ID}:{alias}"})

    def _secret(self, logical_id: str, props: Mapping[str, Any]) -> Physical:
        name = self._name(logical_id, props, "Name")
        if logical_id in self.secret_values:
            value = self.secret_values[logical_id]
        elif "SecretString" in props:
            value = self.resolver.resolve_str(props["SecretString"])
        else:
            value = _generated_secret(self.resolver.resolve(props.get("GenerateSecretString") or {}))
            if "GenerateSecretString" not in props:
                _log.warning(
                    "%s has no value in the template; the local stack stored a random one", logical_id
                )
        kwargs: dict[str, Any] = {"Name": name, "SecretString": value}
        for key in ("Description", "KmsKeyId"):
            if key in props:
                kwargs[key] = self.resolver.resolve_str(props[key])
        arn = self._client("secretsmanager").create_secret(**kwargs)["ARN"]
        return Physical(arn, {"Id": arn, "Name": name})

    def _queue(self, logical_id: str, props: Mapping[str, Any]) -> Physical:
        fifo = self.resolver.resolve(props.get("FifoQueue", False)) in {True, "true", "True"}
        name = self._name(logical_id, props, "QueueName")
        if fifo and "QueueName" not in props:
            name += ".fifo"
        attributes: dict[str, str] = {}
        for key in _QUEUE_ATTRIBUTES:
            if key not in props:
                continue
            value = self.resolver.resolve(props[key])
            if isinstance(value, dict):
                attributes[key] = json.dumps(value)
            elif isinstance(value, bool):
                attributes[key] = "true" if value else "false"
            else:
                attributes[key] = str(value)
        sqs = self._client("sqs")
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = f"arn:aws:sqs:{self.region}:{ACCOUNT_ID}:{name}"
        return Physical(url, {"Arn": arn, "QueueName": name, "QueueUrl": url})


def _generated_secret(spec: Mapping[str, Any]) -> str:
    """A value as Secrets Manager's GenerateSecretString would produce it (length and exclusions)."""
    length = int(spec.get("PasswordLength", 32))
    alphabet = ""
    if not spec.get("ExcludeLowercase"):
        alphabet += string.ascii_lowercase
    if not spec.get("ExcludeUppercase"):
        alphabet += string.ascii_uppercase
    if not spec.get("ExcludeNumbers"):
        alphabet += string.digits
    if not spec.get("ExcludePunctuation"):
        alphabet += "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    if spec.get("IncludeSpace"):
        alphabet += " "
    excluded = set(str(spec.get("ExcludeCharacters", "")))
    alphabet = "".join(ch for ch in alphabet if ch not in excluded)
    value = "".join(secrets.choice(alphabet) for _ in range(length))
    key = spec.get("GenerateStringKey")
    if key:
        document = json.loads(str(spec.get("SecretStringTemplate") or "{}"))
        document[str(key)] = value
        return json.dumps(document)
    return value
