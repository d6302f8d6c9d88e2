"""AWS resources for tests: tables built from template.yaml, the token key, secrets and queues."""

from __future__ import annotations

import copy
import functools
import itertools
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

from b24connector.settings import Settings, load_settings
from tests.support.servers import REPO_ROOT

TEST_REGION = "eu-central-1"
# Fake credentials: botocore signs requests, moto and dynalite accept anything.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
TABLE_LOGICAL_IDS = {
    "portals": "PortalsTable",
    "states": "StatesTable",
    "rate_limit": "RateLimitTable",
    "lead_events": "LeadEventsTable",
}
_counter = itertools.count(1)


@functools.cache
def _template_tables() -> dict[str, dict[str, Any]]:
    from operator_tools.cfn_yaml import load_template, table_definitions

    return table_definitions(load_template(REPO_ROOT / "template.yaml"))


def template_tables() -> dict[str, dict[str, Any]]:
    """create_table kwargs of every table in template.yaml by logical ID (TTL under TimeToLiveSpecification)."""
    return copy.deepcopy(_template_tables())


@dataclass
class AwsStack:
    """Names and endpoints of one test's AWS resources (unique names, so tests never share state)."""

    endpoint_url: str | None  # None: in-process moto (mock_aws), as unit tests use it
    dynamodb_endpoint_url: str | None
    region: str
    portals_table: str
    states_table: str
    rate_limit_table: str
    token_key_id: str
    client_secret_id: str
    cursor_secret_id: str
    refresh_queue_url: str
    rescue_queue_url: str
    lifecycle_queue_url: str = ""
    lead_events_table: str = ""
    event_bus_name: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def aws_env(self) -> dict[str, str]:
        """Endpoint, region and fake credentials for boto3/PynamoDB in this or a child process."""
        env = {**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.endpoint_url is not None:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.dynamodb_endpoint_url is not None and self.dynamodb_endpoint_url != self.endpoint_url:
            env["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb_endpoint_url
        return env

    def env(self) -> dict[str, str]:
        """Everything b24connector.settings reads, pointing at these resources."""
        return {
            **self.aws_env(),
            "APP_ENV": "test",
            "BITRIX24_CLIENT_ID": "local.test.app",
            "CLIENT_SECRET_ID": self.client_secret_id,
            "CURSOR_SECRET_ID": self.cursor_secret_id,
            "PORTALS_TABLE": self.portals_table,
            "STATES_TABLE": self.states_table,
            "RATE_LIMIT_TABLE": self.rate_limit_table,
            "TOKEN_KEY_ID": self.token_key_id,
            "REFRESH_QUEUE_URL": self.refresh_queue_url,
            "RESCUE_QUEUE_URL": self.rescue_queue_url,
            "LIFECYCLE_QUEUE_URL": self.lifecycle_queue_url,
            "LEAD_EVENTS_TABLE": self.lead_events_table,
            "EVENT_BUS_NAME": self.event_bus_name,
            **self.extra_env,
        }

    def settings(self, **overrides: str) -> Settings:
        """Settings parsed from env() plus overrides (env-var names)."""
        return load_settings({**self.env(), **overrides})

    def client(self, service: str) -> Any:
        """A boto3 client of `service` at this stack's endpoint (cached: creating one costs ~0.2 s)."""
        endpoint = self.dynamodb_endpoint_url if service == "dynamodb" else self.endpoint_url
        return _client(service, self.region, endpoint)

    def raw_items(self, table: str) -> list[dict[str, Any]]:
        """Every item of a table, as DynamoDB returns them (test inspection only; the code never scans)."""
        dynamodb = self.client("dynamodb")
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = dynamodb.scan(**kwargs)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@functools.cache
def _client(service: str, region: str, endpoint_url: str | None) -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
    )


def _create_table(dynamodb: Any, name: str, definition: Mapping[str, Any], *, with_ttl: bool) -> None:
    kwargs = dict(definition)
    ttl = kwargs.pop("TimeToLiveSpecification", None)
    dynamodb.create_table(TableName=name, **kwargs)
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.05, "MaxAttempts": 200})
    if ttl and with_ttl:
        dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)


def provision(
    endpoint_url: str | None,
    *,
    dynamodb_endpoint_url: str | None = None,
    region: str = TEST_REGION,
    client_secret: str = "test-client-secret",  # noqa: S107  (a fake for moto)
) -> AwsStack:
    """Create uniquely named tables (from template.yaml), a KMS key, both secrets and the queues."""
    suffix = f"{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
    stack = AwsStack(
        endpoint_url=endpoint_url,
        dynamodb_endpoint_url=dynamodb_endpoint_url or endpoint_url,
        region=region,
        portals_table=f"portals-{suffix}",
        states_table=f"states-{suffix}",
        rate_limit_table=f"rate-limit-{suffix}",
        token_key_id="",
        client_secret_id=f"b24/client-secret-{suffix}",
        cursor_secret_id=f"b24/cursor-key-{suffix}",
        refresh_queue_url="",
        rescue_queue_url="",
        lead_events_table=f"lead-events-{suffix}",
        event_bus_name=f"bus-{suffix}",
    )
    tables = template_tables()
    dynamodb = stack.client("dynamodb")
    on_moto = stack.dynamodb_endpoint_url == endpoint_url
    for kind, name in (
        ("portals", stack.portals_table),
        ("states", stack.states_table),
        ("rate_limit", stack.rate_limit_table),
        ("lead_events", stack.lead_events_table),
    ):
        # dynalite has no TTL API; TTL is checked in code anyway (DynamoDB deletes lazily).
        _create_table(dynamodb, name, tables[TABLE_LOGICAL_IDS[kind]], with_ttl=on_moto)
    kms = stack.client("kms")
    stack.token_key_id = kms.create_key(Description="test token key", KeyUsage="ENCRYPT_DECRYPT")[
        "KeyMetadata"
    ]["Arn"]
    secrets = stack.client("secretsmanager")
    secrets.create_secret(Name=stack.client_secret_id, SecretString=client_secret)
    secrets.create_secret(Name=stack.cursor_secret_id, SecretString=uuid.uuid4().hex + uuid.uuid4().hex)
    sqs = stack.client("sqs")
    stack.refresh_queue_url = sqs.create_queue(QueueName=f"refresh-{suffix}")["QueueUrl"]
    stack.rescue_queue_url = sqs.create_queue(QueueName=f"rescue-{suffix}")["QueueUrl"]
    stack.lifecycle_queue_url = sqs.create_queue(QueueName=f"lifecycle-{suffix}")["QueueUrl"]
    stack.client("events").create_event_bus(Name=stack.event_bus_name)
    return stack
