"""put_secret and deploy_params: the operator's way to the client secret and the deploy parameters."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from moto import mock_aws

from operator_tools import deploy_params, put_secret
from operator_tools.cfn_yaml import load_template
from operator_tools.samconfig import SamConfigError, parameter_overrides, stack_and_region
from tests.support.template_support import REPO_ROOT

REGION = "eu-central-1"
SECRET_VALUE = "zX9-client-secret-from-the-app-card"


class TtyInput(io.StringIO):
    """stdin that claims to be a terminal (so the hidden prompt is used)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def samconfig(tmp_path: Path) -> Path:
    path = tmp_path / "samconfig.toml"
    path.write_text(
        """
version = 0.1
[default.global.parameters]
region = "eu-west-1"
[dev.deploy.parameters]
stack_name = "b24-dev"
parameter_overrides = ["EnvironmentName=dev", "RefreshSchedule=\\"rate(2 hours)\\""]
[prod.deploy.parameters]
stack_name = "b24-prod"
region = "eu-central-1"
parameter_overrides = "EnvironmentName=prod LogLevel=INFO"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name=REGION)
        arn = secrets.create_secret(Name="client-secret", SecretString="generated-placeholder")["ARN"]
        yield {"secrets": secrets, "arn": arn}


def _session_factory(cloudformation: Any) -> Any:
    """A boto3 Session factory whose CloudFormation client is `cloudformation` (a stubbed one)."""

    class Session:
        def __init__(self, region_name: str | None = None) -> None:
            self.region_name = region_name
            self._session = boto3.session.Session(region_name=region_name or REGION)

        def client(self, service: str) -> Any:
            return cloudformation if service == "cloudformation" else self._session.client(service)

    return Session


def _stubbed_cloudformation(
    stack: str, outputs: list[dict[str, str]], parameters: list[dict[str, str]]
) -> Any:
    client = boto3.client("cloudformation", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_response(
        "describe_stacks",
        {
            "Stacks": [
                {
                    "StackName": stack,
                    "CreationTime": "2026-01-01T00:00:00Z",
                    "StackStatus": "UPDATE_COMPLETE",
                    "Outputs": outputs,
                    "Parameters": parameters,
                }
            ]
        },
        {"StackName": stack},
    )
    stubber.activate()
    return client


# --- samconfig ---------------------------------------------------------------------------------------


def test_samconfig_overrides_and_stack(samconfig: Path) -> None:
    assert parameter_overrides("dev", samconfig) == {
        "EnvironmentName": "dev",
        "RefreshSchedule": "rate(2 hours)",
    }
    assert parameter_overrides("prod", samconfig) == {"EnvironmentName": "prod", "LogLevel": "INFO"}
    # The global region applies where the environment names none
    assert stack_and_region("dev", samconfig) == ("b24-dev", "eu-west-1")
    assert stack_and_region("prod", samconfig) == ("b24-prod", "eu-central-1")
    with pytest.raises(SamConfigError):
        stack_and_region("staging", samconfig)


def test_the_committed_samconfig_has_both_environments() -> None:
    path = REPO_ROOT / "samconfig.toml"
    for env in ("dev", "prod"):
        stack, region = stack_and_region(env, path)
        assert stack == f"b24connector-{env}"
        assert region == REGION
        overrides = parameter_overrides(env, path)
        assert overrides["EnvironmentName"] == env
        # Every override names a template parameter, and no value would be split at a space by SAM
        assert set(overrides) <= _template_parameters()
        assert all(" " not in value for value in overrides.values())


def _template_parameters() -> set[str]:
    return set(load_template(REPO_ROOT / "template.yaml")["Parameters"])


# --- put_secret --------------------------------------------------------------------------------------


def test_put_secret_reads_stdin_and_never_prints_the_value(
    aws: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a secret id and the value piped on stdin
    code = put_secret.main(
        ["--secret-id", aws["arn"], "--region", REGION], stdin=io.StringIO(SECRET_VALUE + "\n")
    )
    # Then it is stored as the current version, without the newline, and never echoed
    assert code == 0
    assert aws["secrets"].get_secret_value(SecretId=aws["arn"])["SecretString"] == SECRET_VALUE
    out, err = capsys.readouterr()
    assert SECRET_VALUE not in out + err
    assert aws["arn"] in out


def test_put_secret_prompts_without_echo_on_a_terminal(aws: dict[str, Any]) -> None:
    prompts: list[str] = []

    def hidden_prompt(text: str) -> str:
        prompts.append(text)
        return SECRET_VALUE

    code = put_secret.main(
        ["--secret-id", aws["arn"], "--region", REGION], stdin=TtyInput("ignored"), prompt=hidden_prompt
    )
    assert code == 0
    assert prompts == [put_secret.PROMPT]
    assert aws["secrets"].get_secret_value(SecretId=aws["arn"])["SecretString"] == SECRET_VALUE


def test_put_secret_finds_the_secret_through_the_stack_output(
    aws: dict[str, Any], samconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloudformation = _stubbed_cloudformation(
        "b24-prod", [{"OutputKey": "ClientSecretArn", "OutputValue": aws["arn"]}], []
    )
    code = put_secret.main(
        ["--env", "prod", "--samconfig", str(samconfig)],
        stdin=io.StringIO(SECRET_VALUE),
        session_factory=_session_factory(cloudformation),
    )
    assert code == 0
    assert aws["secrets"].get_secret_value(SecretId=aws["arn"])["SecretString"] == SECRET_VALUE
    assert SECRET_VALUE not in "".join(capsys.readouterr())


def test_put_secret_refuses_an_empty_value(aws: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code = put_secret.main(["--secret-id", aws["arn"], "--region", REGION], stdin=io.StringIO("  \n"))
    assert code == 1
    assert "empty" in capsys.readouterr().err
    assert aws["secrets"].get_secret_value(SecretId=aws["arn"])["SecretString"] == "generated-placeholder"


def test_put_secret_reports_a_stack_without_the_output(
    samconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloudformation = _stubbed_cloudformation(
        "b24-dev", [{"OutputKey": "ApiUrl", "OutputValue": "https://x"}], []
    )
    with mock_aws():
        code = put_secret.main(
            ["--env", "dev", "--samconfig", str(samconfig)],
            stdin=io.StringIO(SECRET_VALUE),
            session_factory=_session_factory(cloudformation),
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "no ClientSecretArn output" in err
    assert SECRET_VALUE not in err


def test_put_secret_reports_an_unknown_secret_by_code_only(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_aws():
        code = put_secret.main(
            ["--secret-id", "missing", "--region", REGION], stdin=io.StringIO(SECRET_VALUE)
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "ResourceNotFoundException" in err
    assert SECRET_VALUE not in err


# --- deploy_params -----------------------------------------------------------------------------------


def test_deploy_params_add_the_client_id_from_the_environment(samconfig: Path, tmp_path: Path) -> None:
    output = tmp_path / "params.yaml"
    code = deploy_params.main(
        ["--env", "dev", "--samconfig", str(samconfig), "--output", str(output)],
        environ={"BITRIX24_CLIENT_ID": "local.abc.123"},
        session_factory=lambda **_: pytest.fail("no AWS call when the client id is given"),
    )
    assert code == 0
    assert yaml.safe_load(output.read_text()) == {
        "Bitrix24ClientId": "local.abc.123",
        "EnvironmentName": "dev",
        "RefreshSchedule": "rate(2 hours)",
    }


def test_deploy_params_reuse_the_deployed_client_id(samconfig: Path, tmp_path: Path) -> None:
    cloudformation = _stubbed_cloudformation(
        "b24-prod", [], [{"ParameterKey": "Bitrix24ClientId", "ParameterValue": "app.deployed.1"}]
    )
    output = tmp_path / "params.yaml"
    code = deploy_params.main(
        ["--env", "prod", "--samconfig", str(samconfig), "--output", str(output)],
        environ={},
        session_factory=_session_factory(cloudformation),
    )
    assert code == 0
    assert yaml.safe_load(output.read_text())["Bitrix24ClientId"] == "app.deployed.1"


def test_deploy_params_fail_on_a_first_deploy_without_client_id(
    samconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = boto3.client("cloudformation", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_client_error(
        "describe_stacks",
        service_error_code="ValidationError",
        service_message="Stack with id b24-dev does not exist",
    )
    stubber.activate()
    output = tmp_path / "params.yaml"
    code = deploy_params.main(
        ["--env", "dev", "--samconfig", str(samconfig), "--output", str(output)],
        environ={},
        session_factory=_session_factory(client),
    )
    assert code == 1
    assert "BITRIX24_CLIENT_ID" in capsys.readouterr().err
    assert not output.exists()


TRICKY_VALUES = {
    "Bitrix24ClientId": "local.0123.4567",
    "Flag": "true",
    "Octal": "021",
    "Exponent": "1e3",
    "Empty": "",
    "Quote": 'a "b" c',
    "Spaces": "rate(1 hour)",
}


def test_deploy_params_file_keeps_every_value_a_string(tmp_path: Path) -> None:
    output = tmp_path / "params.yaml"
    deploy_params.write_overrides(TRICKY_VALUES, output)
    assert yaml.safe_load(output.read_text()) == TRICKY_VALUES


def test_deploy_params_refuse_a_file_sam_cannot_read(samconfig: Path, tmp_path: Path) -> None:
    output = tmp_path / "params.json"
    code = deploy_params.main(
        ["--env", "dev", "--samconfig", str(samconfig), "--output", str(output)],
        environ={"BITRIX24_CLIENT_ID": "local.abc.123"},
    )
    assert code == 1
    assert not output.exists()


SAM_PYTHON = REPO_ROOT / ".venv-tools" / "bin" / "python"
# The exact converter `sam deploy --parameter-overrides` runs (samcli.cli.types).
SAM_PARSE = """
import json, sys
from samcli.cli.types import CfnParameterOverridesType
print(json.dumps(CfnParameterOverridesType().convert("file://" + sys.argv[1], None, None)))
"""


@pytest.mark.skipif(not SAM_PYTHON.exists(), reason="SAM CLI virtualenv (.venv-tools) absent")
def test_sam_cli_reads_the_deploy_params_file_as_written(tmp_path: Path) -> None:
    output = tmp_path / "deploy-parameters-dev.yaml"
    deploy_params.write_overrides(TRICKY_VALUES, output)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(SAM_PYTHON), "-c", SAM_PARSE, str(output)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == TRICKY_VALUES
