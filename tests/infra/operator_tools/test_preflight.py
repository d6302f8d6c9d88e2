"""make preflight: its decisions, and the whole check against moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from b24connector.credentials import CLIENT_SECRET_NOT_SET
from operator_tools import preflight
from operator_tools.cfn_yaml import load_template
from tests.support.template_support import REPO_ROOT, TEMPLATE_PATH

REGION = "eu-central-1"
SECRET_VALUE = "zX9-client-secret-from-the-app-card"

# --- decisions -------------------------------------------------------------------------------------


def test_a_new_account_quota_cannot_take_a_reservation() -> None:
    # Given a new account (quota 10) and a 5-execution reservation for the worker
    finding = preflight.concurrency_finding(10, 10, 0, {"RefreshWorkerFunction": 5})
    # Then the deploy is blocked, with the way out named
    assert finding.level == "fail"
    assert "WorkerReservedConcurrency=0" in finding.message
    assert "leaving 5 < 100" in finding.message


def test_no_reservation_needs_no_headroom_but_a_tiny_quota_is_a_warning() -> None:
    finding = preflight.concurrency_finding(10, 10, 0, {"RefreshWorkerFunction": 0, "LeadsFunction": 0})
    assert finding.level == "warn"
    assert "reserves none" in finding.message


def test_a_reservation_fits_when_100_stay_unreserved() -> None:
    assert preflight.concurrency_finding(1000, 1000, 0, {"RefreshWorkerFunction": 10}).level == "ok"
    assert (
        preflight.concurrency_finding(110, 110, 0, {"RefreshWorkerFunction": 10}).level == "warn"
    )  # fits, low
    assert preflight.concurrency_finding(109, 109, 0, {"RefreshWorkerFunction": 10}).level == "fail"


def test_the_stacks_own_reservation_is_given_back_before_the_check() -> None:
    # The deployed stack already holds 10 of the 110: re-reserving them leaves exactly 100.
    assert preflight.concurrency_finding(110, 100, 10, {"RefreshWorkerFunction": 10}).level == "warn"
    assert preflight.concurrency_finding(110, 100, 0, {"RefreshWorkerFunction": 10}).level == "fail"


def test_runtime_decisions() -> None:
    known = ["python3.12", "python3.13"]
    assert preflight.runtime_finding("python3.13", "arm64", REGION, known, True).level == "ok"
    assert preflight.runtime_finding("python3.13", "arm64", REGION, known, False).level == "fail"
    assert preflight.runtime_finding("python3.13", "arm64", REGION, known, None).level == "warn"
    assert preflight.runtime_finding("python3.99", "arm64", REGION, known, True).level == "fail"


def test_stack_state_decisions() -> None:
    assert preflight.stack_finding("s", None).level == "ok"
    assert preflight.stack_finding("s", "UPDATE_COMPLETE").level == "ok"
    rolled_back = preflight.stack_finding("s", "ROLLBACK_COMPLETE")
    assert rolled_back.level == "fail"
    assert "delete-stack --stack-name s" in rolled_back.message
    assert preflight.stack_finding("s", "UPDATE_IN_PROGRESS").level == "fail"
    assert preflight.stack_finding("s", "UPDATE_ROLLBACK_FAILED").level == "fail"


def test_secret_decisions_never_show_the_value() -> None:
    assert preflight.secret_finding(False, None).level == "ok"
    unset = preflight.secret_finding(True, CLIENT_SECRET_NOT_SET)
    assert (unset.level, unset.message.startswith("client secret not set")) == ("warn", True)
    put = preflight.secret_finding(True, SECRET_VALUE)
    assert put.level == "ok"
    assert SECRET_VALUE not in put.message
    assert preflight.secret_finding(True, None, "AccessDeniedException").level == "warn"


def test_deletion_protection_on_a_first_create_is_a_warning() -> None:
    assert preflight.deletion_protection_finding(False, {"TableDeletionProtection": "true"}) is not None
    assert preflight.deletion_protection_finding(True, {"TableDeletionProtection": "true"}) is None
    assert preflight.deletion_protection_finding(False, {"TableDeletionProtection": "false"}) is None


@pytest.mark.parametrize(("overrides", "worker"), [({}, 0), ({"WorkerReservedConcurrency": "7"}, 7)])
def test_reservations_and_runtimes_are_read_from_the_template(overrides: dict[str, str], worker: int) -> None:
    template = load_template(TEMPLATE_PATH)
    functions = preflight.function_settings(template, preflight.parameter_values(template, overrides))
    # Every function of the template, whatever it holds (none hard-coded here)
    assert set(functions) == {
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    assert functions["RefreshWorkerFunction"]["Reserved"] == worker
    assert sum(spec["Reserved"] for spec in functions.values()) == worker
    assert {(spec["Runtime"], tuple(spec["Architectures"])) for spec in functions.values()} == {
        ("python3.13", ("arm64",))
    }


# --- against moto ----------------------------------------------------------------------------------------


class MotoSession:
    """A boto3 session on moto whose Lambda answers GetAccountSettings (moto 5.2 does not)."""

    def __init__(self, limit: int, unreserved: int) -> None:
        self.region_name = REGION
        self._settings = {
            "AccountLimit": {"ConcurrentExecutions": limit, "UnreservedConcurrentExecutions": unreserved}
        }

    def client(self, service: str, region_name: str | None = None) -> Any:
        client = boto3.client(service, region_name=region_name or REGION)  # type: ignore[call-overload]
        if service == "lambda":
            client.get_account_settings = lambda: self._settings
        return client


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def _samconfig(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "samconfig.toml"
    path.write_text(
        f"""version = 0.1
[dev.deploy.parameters]
stack_name = "b24-dev"
region = "{REGION}"
parameter_overrides = ["EnvironmentName=dev"{extra}]
""",
        encoding="utf-8",
    )
    return path


def _deployed_stack_with_secret(value: str) -> None:
    secret_arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="b24-dev-client", SecretString=value
    )["ARN"]
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"ClientSecretArn": {"Value": secret_arn}},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="b24-dev", TemplateBody=json.dumps(template)
    )


def _run(
    tmp_path: Path, session: MotoSession, capsys: pytest.CaptureFixture[str], extra: str = ""
) -> tuple[int, str]:
    code = preflight.main(
        ["--env", "dev", "--samconfig", str(_samconfig(tmp_path, extra)), "--template", str(TEMPLATE_PATH)],
        session_factory=lambda **_: session,
    )
    return code, capsys.readouterr().out


def test_preflight_before_the_first_deploy(
    aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(tmp_path, MotoSession(1000, 1000), capsys)
    assert code == 0
    assert "b24-dev does not exist yet" in out
    assert "python3.13 on arm64: accepted by Lambda in eu-central-1" in out
    assert "nothing blocks a deploy (0 warning(s))" in out


def test_preflight_blocks_a_reservation_a_small_account_cannot_give(
    aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(tmp_path, MotoSession(10, 10), capsys, ', "WorkerReservedConcurrency=5"')
    assert code == 1
    assert "FAIL  concurrency" in out
    assert "1 blocker(s)" in out


def test_preflight_reports_the_client_secret_until_it_is_put(
    aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _deployed_stack_with_secret(CLIENT_SECRET_NOT_SET)
    code, out = _run(tmp_path, MotoSession(1000, 1000), capsys)
    assert code == 0  # the deploy itself is fine; the functions fail closed until put-secret
    assert "WARN  client secret: client secret not set: run `make put-secret`" in out
    boto3.client("secretsmanager", region_name=REGION).put_secret_value(
        SecretId="b24-dev-client", SecretString=SECRET_VALUE
    )
    code, out = _run(tmp_path, MotoSession(1000, 1000), capsys)
    assert code == 0
    assert "ok    client secret: set" in out
    assert SECRET_VALUE not in out


def test_preflight_explains_missing_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Refusing(MotoSession):
        def client(self, service: str, region_name: str | None = None) -> Any:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError

    code = preflight.main(
        ["--env", "dev", "--samconfig", str(_samconfig(tmp_path))], session_factory=lambda **_: Refusing(1, 1)
    )
    assert code == 1
    assert "cannot reach AWS (NoCredentialsError)" in capsys.readouterr().err


def test_the_readme_deploy_steps_run_preflight_first() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    deploy = readme[readme.index("## Deploy") :]
    assert deploy.index("make preflight") < deploy.index("make deploy") < deploy.index("make put-secret")
