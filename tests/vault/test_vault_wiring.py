"""Models vs template.yaml, secrets through Powertools, observability, and the settings-built vault."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from b24connector import credentials
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.vault import Vault, open_vault
from b24connector.vault.models import OAuthStateModel, PortalModel, bind_portal_model
from tests.support.aws import AwsStack, template_tables
from tests.support.servers import REPO_ROOT


def _schema(model: type) -> dict[str, object]:
    schema = model._get_schema()
    return {
        "keys": sorted((k["AttributeName"], k["KeyType"]) for k in schema["key_schema"]),
        "attributes": sorted(
            (a["AttributeName"], a["AttributeType"]) for a in schema["attribute_definitions"]
        ),
        "indexes": sorted(
            (
                i["index_name"],
                tuple((k["AttributeName"], k["KeyType"]) for k in i["key_schema"]),
                i["projection"]["ProjectionType"],
                tuple(sorted(i["projection"].get("NonKeyAttributes", []))),
            )
            for i in schema["global_secondary_indexes"]
        ),
    }


def _template_schema(logical_id: str) -> dict[str, object]:
    table = template_tables()[logical_id]
    return {
        "keys": sorted((k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]),
        "attributes": sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]),
        "indexes": sorted(
            (
                i["IndexName"],
                tuple((k["AttributeName"], k["KeyType"]) for k in i["KeySchema"]),
                i["Projection"]["ProjectionType"],
                tuple(sorted(i["Projection"].get("NonKeyAttributes", []))),
            )
            for i in table.get("GlobalSecondaryIndexes", [])
        ),
    }


def test_portal_model_matches_template() -> None:
    assert _schema(bind_portal_model("x", "eu-central-1")) == _template_schema("PortalsTable")
    assert _schema(PortalModel) == _template_schema("PortalsTable")


def test_state_model_matches_template_including_ttl() -> None:
    assert _schema(OAuthStateModel) == _template_schema("StatesTable")
    assert template_tables()["StatesTable"]["TimeToLiveSpecification"]["AttributeName"] == "expires_at"
    assert "expires_at" in OAuthStateModel.get_attributes()


def test_models_bind_to_names_at_runtime() -> None:
    first = bind_portal_model("table-one", "eu-central-1")
    second = bind_portal_model("table-two", "eu-west-1", "http://127.0.0.1:1")
    assert first.Meta.table_name == "table-one"
    assert (second.Meta.table_name, second.Meta.region, second.Meta.host) == (
        "table-two",
        "eu-west-1",
        "http://127.0.0.1:1",
    )
    assert bind_portal_model("table-one", "eu-central-1") is first
    assert first.refresh_due_index._model is first  # indexes query the bound table


def test_vault_from_settings_uses_the_configured_names(mocked_aws: AwsStack) -> None:
    vault = Vault.from_settings(mocked_aws.settings())
    assert vault.portals.model.Meta.table_name == mocked_aws.portals_table
    assert vault.states.model.Meta.table_name == mocked_aws.states_table
    assert vault.cipher.key_id == mocked_aws.token_key_id
    assert vault.states.ttl_seconds == 600
    policy = RefreshPolicy.from_settings(mocked_aws.settings())
    assert policy.lease_seconds > policy.max_wait_seconds
    assert open_vault(mocked_aws.settings()) is open_vault(mocked_aws.settings())


def test_secrets_come_from_secrets_manager_and_are_cached(mocked_aws: AwsStack) -> None:
    parameters.clear_caches()
    settings = mocked_aws.settings(SECRET_MAX_AGE_SECONDS="300")
    assert credentials.client_secret(settings) == "test-client-secret"
    mocked_aws.client("secretsmanager").put_secret_value(
        SecretId=mocked_aws.client_secret_id, SecretString="rotated"
    )
    assert credentials.client_secret(settings) == "test-client-secret"  # within max_age
    assert len(credentials.cursor_signing_key(settings)) == 64
    parameters.clear_caches()
    assert credentials.client_secret(settings) == "rotated"


def test_missing_or_empty_secret_names_the_secret_not_a_value(mocked_aws: AwsStack) -> None:
    parameters.clear_caches()
    with pytest.raises(credentials.SecretUnavailable, match="nope"):
        credentials.client_secret(mocked_aws.settings(CLIENT_SECRET_ID="nope"))
    mocked_aws.client("secretsmanager").put_secret_value(
        SecretId=mocked_aws.client_secret_id, SecretString="  "
    )
    with pytest.raises(credentials.SecretUnavailable, match="empty"):
        credentials.client_secret(mocked_aws.settings())
    parameters.clear_caches()


def test_the_deploy_marker_is_refused_as_client_secret_not_set_and_counted(
    mocked_aws: AwsStack, metrics_capture: dict[str, Any]
) -> None:
    parameters.clear_caches()
    mocked_aws.client("secretsmanager").put_secret_value(
        SecretId=mocked_aws.client_secret_id, SecretString=credentials.CLIENT_SECRET_NOT_SET
    )
    with pytest.raises(credentials.ClientSecretNotSet, match="client secret not set") as raised:
        credentials.client_secret(mocked_aws.settings())
    assert raised.value.code == "CLIENT_SECRET_NOT_SET"
    assert isinstance(raised.value, credentials.SecretUnavailable)  # every SecretUnavailable path applies
    assert credentials.CLIENT_SECRET_MISSING_METRIC in metrics_capture
    # The cursor key is another secret: the marker check is for the client secret only.
    assert len(credentials.cursor_signing_key(mocked_aws.settings())) == 64
    parameters.clear_caches()


def test_observability_has_quiet_clients_and_no_tracer() -> None:
    from b24connector import observability

    assert logging.getLogger("urllib3").level == logging.WARNING
    assert logging.getLogger("botocore").level == logging.WARNING
    assert observability.metrics is not None
    # Importing the vault and observability must not drag in the X-Ray SDK (cold start).
    probe = (
        "import sys, b24connector.vault, b24connector.observability, b24connector.credentials;"
        "print(sorted(m for m in sys.modules if m.startswith(('aws_xray_sdk', 'cryptography'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": "functions", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"
