"""The rehearsal's moto server can fail a deploy the way AWS would (names across stacks, quota).

Small SAM templates go through CreateChangeSet/ExecuteChangeSet on `python -m deploy_rehearsal.moto_server`
(the transform, the Scheduler model and the GetAccountSettings answer of the rehearsal), so a green
`make deploy-rehearsal` means something: the fixed schedule name of aws/serverless-application-model#3109
fails the second stack here too.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.support.servers import REPO_ROOT, ChildServer

REGION = "eu-central-1"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (REPO_ROOT / ".venv-tools" / "bin" / "python").exists(),
        reason="SAM CLI virtualenv (.venv-tools) absent",
    ),
]


def _template(schedule_name: str | None) -> str:
    schedule: dict[str, Any] = {"ScheduleExpression": "rate(1 hour)"}
    if schedule_name:
        schedule["Name"] = {"Fn::Sub": schedule_name}
    return json.dumps(
        {
            "Transform": "AWS::Serverless-2016-10-31",
            "Resources": {
                "SweepFunction": {
                    "Type": "AWS::Serverless::Function",
                    "Properties": {
                        "Runtime": "python3.13",
                        "Handler": "app.handler",
                        "CodeUri": "s3://code-bucket/app.zip",
                        "Events": {"Sweep": {"Type": "ScheduleV2", "Properties": schedule}},
                    },
                }
            },
            "Outputs": {"FunctionArn": {"Value": {"Fn::GetAtt": ["SweepFunction", "Arn"]}}},
        }
    )


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChildServer, Path]]:
    log = tmp_path_factory.mktemp("rehearsal") / "workarounds.jsonl"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO_ROOT / p) for p in ("functions", "infra", "."))
    server = ChildServer(
        [sys.executable, "-m", "deploy_rehearsal.moto_server", "--workaround-log", str(log), "--port", "0"],
        env=env,
    ).start()
    try:
        yield server, log
    finally:
        server.stop()


def _client(moto: tuple[ChildServer, Path], service: str) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        region_name=REGION,
        endpoint_url=moto[0].endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _deploy(moto: tuple[ChildServer, Path], stack: str, template: str) -> dict[str, Any]:
    s3 = _client(moto, "s3")
    try:
        s3.create_bucket(Bucket="code-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("app.py", "def handler(event, context):\n    return None\n")
        s3.put_object(Bucket="code-bucket", Key="app.zip", Body=code.getvalue())
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    cfn = _client(moto, "cloudformation")
    cfn.create_change_set(
        StackName=stack,
        ChangeSetName="c1",
        ChangeSetType="CREATE",
        TemplateBody=template,
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    cfn.execute_change_set(StackName=stack, ChangeSetName="c1")
    return dict(cfn.describe_stacks(StackName=stack)["Stacks"][0])


def test_a_fixed_schedule_name_fails_the_second_stack(moto: tuple[ChildServer, Path]) -> None:
    # SAM's own name for the schedule (<Function><Event>) in the default group, as before the fix
    assert _deploy(moto, "fixed-dev", _template(None))["StackStatus"] == "CREATE_COMPLETE"
    # The second stack fails as on AWS: the resource fails, the stack rolls back
    failed = _deploy(moto, "fixed-prod", _template(None))
    assert failed["StackStatus"] == "ROLLBACK_COMPLETE"
    events = _client(moto, "cloudformation").describe_stack_events(StackName="fixed-prod")["StackEvents"]
    assert any("already exists" in str(e.get("ResourceStatusReason")) for e in events)
    names = [s["Name"] for s in _client(moto, "scheduler").list_schedules()["Schedules"]]
    assert names.count("SweepFunctionSweep") == 1


def test_schedules_named_after_their_stack_coexist(moto: tuple[ChildServer, Path]) -> None:
    for stack in ("named-dev", "named-prod"):
        described = _deploy(moto, stack, _template("${AWS::StackName}-sweep"))
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs") or []}
        assert outputs["FunctionArn"].startswith(
            f"arn:aws:lambda:{REGION}:"
        )  # outputs read after the change set
    names = {s["Name"] for s in _client(moto, "scheduler").list_schedules()["Schedules"]}
    assert {"named-dev-sweep", "named-prod-sweep"} <= names


def test_lambda_account_settings_follow_moto_reservations(moto: tuple[ChildServer, Path]) -> None:
    lambda_client = _client(moto, "lambda")
    before = lambda_client.get_account_settings()["AccountLimit"]
    assert before["ConcurrentExecutions"] == 1000
    (function,) = [f for f in lambda_client.list_functions()["Functions"] if "named-dev" in f["FunctionName"]]
    lambda_client.put_function_concurrency(
        FunctionName=function["FunctionName"], ReservedConcurrentExecutions=7
    )
    after = lambda_client.get_account_settings()["AccountLimit"]
    assert after["UnreservedConcurrentExecutions"] == before["UnreservedConcurrentExecutions"] - 7
    log = [json.loads(line)["workaround"] for line in moto[1].read_text().splitlines()]
    assert {"serverless-transform", "change-set-outputs", "model:AWS::Scheduler::Schedule"} <= set(log)
