"""The stack over the project's own template.yaml and the Bitrix24 emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from local_stack import LocalStack, StackConfig
from local_stack.resources import aws_client
from tests.support.servers import REPO_ROOT

REPO = REPO_ROOT
STACK_JSON_KEYS = {
    "api_url",
    "lambda_endpoint_url",
    "aws_endpoint_url",
    "aws_region",
    "bitrix24_portal_url",
    "oauth_server_url",
    "portal_domain",
    "member_id",
    "client_id",
    "client_secret",
    "emulator_admin_url",
}


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state_file = tmp_path_factory.mktemp("state") / "stack.json"
    with LocalStack(StackConfig(template=REPO / "template.yaml", leads=50, state_file=state_file)) as stack:
        yield stack


def test_stack_json_has_every_contract_key(real_stack: LocalStack) -> None:
    assert real_stack.config.state_file is not None
    document = json.loads(real_stack.config.state_file.read_text())
    assert set(document) >= STACK_JSON_KEYS
    assert all(document[key] for key in STACK_JSON_KEYS)
    assert document["status"] == "running"
    assert document["client_id"] == real_stack.client_id
    assert document["emulator_admin_url"].startswith(document["bitrix24_portal_url"])
    assert oct(real_stack.config.state_file.stat().st_mode & 0o777) == "0o600"
    assert real_stack.running_info().startup_seconds < 10


def test_routes_and_functions_come_from_the_template(real_stack: LocalStack) -> None:
    info = real_stack.running_info()
    assert info.routes == ["GET /authorize", "GET /callback", "POST /install", "POST /events"]
    assert {
        "AuthorizeFunction",
        "CallbackFunction",
        "InstallFunction",
        "RefreshFunction",
        "RefreshWorkerFunction",
        "LeadsFunction",
        "TokenRescueFunction",
    } <= set(info.functions)


def test_tables_have_their_indexes_and_ttl(real_stack: LocalStack) -> None:
    dynamodb = aws_client("dynamodb", real_stack.aws_endpoint_url, real_stack.aws_region)
    tables = real_stack.running_info().tables
    portals = dynamodb.describe_table(TableName=tables["PortalsTable"])["Table"]
    indexes = {index["IndexName"]: index for index in portals["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"DomainIndex", "RefreshDueIndex"}
    assert indexes["RefreshDueIndex"]["Projection"] == {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": ["version"],
    }
    for name in ("StatesTable", "RateLimitTable"):
        ttl = dynamodb.describe_time_to_live(TableName=tables[name])["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_secrets_queues_and_key_are_wired_into_every_function(real_stack: LocalStack) -> None:
    info = real_stack.running_info()
    secrets = aws_client("secretsmanager", info.aws_endpoint_url, info.aws_region)
    sqs = aws_client("sqs", info.aws_endpoint_url, info.aws_region)
    for logical_id, runtime in real_stack.runtimes.items():
        env = runtime.spec.environment
        assert env["LOCAL_MODE"] == "true", logical_id
        assert env["BITRIX24_CLIENT_ID"] == info.client_id
        assert env["OAUTH_SERVERS"] == info.oauth_server_url
        assert env["ALLOWED_PORTAL_HOSTS"] == info.portal_domain
        assert env["PORTALS_TABLE"] == info.tables["PortalsTable"]
        assert env["REFRESH_QUEUE_URL"] == info.queues["RefreshQueue"]
        assert env["TOKEN_KEY_ID"] == info.kms_key_arn
        assert env["_HANDLER"].startswith("b24connector.handlers.")
    env = real_stack.runtimes["LeadsFunction"].spec.environment
    # ClientSecret holds the emulator app's secret; the cursor key is random and long
    assert secrets.get_secret_value(SecretId=env["CLIENT_SECRET_ID"])["SecretString"] == info.client_secret
    cursor_key = secrets.get_secret_value(SecretId=env["CURSOR_SECRET_ID"])["SecretString"]
    assert len(cursor_key) == 64
    assert cursor_key.isalnum()
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=info.queues["RefreshQueue"], AttributeNames=["RedrivePolicy"])[
            "Attributes"
        ]["RedrivePolicy"]
    )
    assert redrive["deadLetterTargetArn"].endswith(":b24connector-local-RefreshDLQ")
    assert int(redrive["maxReceiveCount"]) == 5


def test_emulator_redirects_to_our_callback(real_stack: LocalStack) -> None:
    assert real_stack.emulator is not None
    assert real_stack.emulator.config.redirect_uri == f"{real_stack.api_url}/callback"
