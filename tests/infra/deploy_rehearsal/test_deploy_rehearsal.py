"""The deploy rehearsal's own decisions: what it expects of a stack, and that it never reaches AWS."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_rehearsal import cli

from operator_tools.cfn_yaml import load_template
from tests.support.template_support import TEMPLATE_PATH


def test_expectations_come_from_the_template_not_a_list() -> None:
    template = load_template(TEMPLATE_PATH)
    expected = cli.template_expectations(TEMPLATE_PATH)
    by_type = {
        kind: sorted(i for i, r in template["Resources"].items() if r["Type"] == kind)
        for kind in ("AWS::Serverless::Function", "AWS::SQS::Queue", "AWS::DynamoDB::Table")
    }
    assert expected["functions"] == by_type["AWS::Serverless::Function"]
    assert expected["queues"] == by_type["AWS::SQS::Queue"]
    assert expected["tables"] == by_type["AWS::DynamoDB::Table"]
    assert expected["outputs"] == sorted(template["Outputs"])
    # Resource references must resolve; parameters may legitimately be empty (AllowedPortalHosts).
    assert {"CLIENT_SECRET_ID", "PORTALS_TABLE", "TOKEN_KEY_ID"} <= set(expected["referenced_variables"])
    assert "ALLOWED_PORTAL_HOSTS" not in expected["referenced_variables"]
    assert "PKCE_SECRET_ID" not in expected["referenced_variables"]  # Fn::If: "" while PKCE is off


def test_a_template_with_another_function_is_expected_whole(tmp_path: Path) -> None:
    extra = tmp_path / "template.yaml"
    extra.write_text(
        TEMPLATE_PATH.read_text(encoding="utf-8").replace(
            "Resources:\n",
            "Resources:\n  ExtraFunction:\n    Type: AWS::Serverless::Function\n    Properties:\n"
            "      Handler: x.handler\n",
            1,
        ),
        encoding="utf-8",
    )
    assert "ExtraFunction" in cli.template_expectations(extra)["functions"]
    assert cli.schedule_events(TEMPLATE_PATH) == ["RefreshFunction.Sweep"]


def test_every_step_runs_on_moto_with_fake_credentials_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "production-admin")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-session")
    monkeypatch.setenv("BITRIX24_CLIENT_ID", "local.real.app")
    env = cli.isolated_env("http://127.0.0.1:1234", "eu-central-1", tmp_path)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1234"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("testing", "testing")
    assert "AWS_PROFILE" not in env
    assert "AWS_SESSION_TOKEN" not in env
    assert "BITRIX24_CLIENT_ID" not in env  # the first deploy passes the rehearsal's own id
    assert env["AWS_CONFIG_FILE"].startswith(str(tmp_path))
    assert env["AWS_SHARED_CREDENTIALS_FILE"].startswith(str(tmp_path))
