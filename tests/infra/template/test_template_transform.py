"""template.yaml through SAM's own translator (the AWS::Serverless transform), as CloudFormation sees it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

from tests.support.template_support import REPO_ROOT, TEMPLATE_PATH, TEMPLATE_VARIANTS

SAM_PYTHON = REPO_ROOT / ".venv-tools" / "bin" / "python"


def _transformed(overrides: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_DEFAULT_REGION="eu-central-1", PYTHONPATH=str(REPO_ROOT / "infra"))
    # As `sam deploy` hands it over: packaged, the code in S3.
    packaged = re.sub(
        r"(CodeUri|ContentUri): (?!s3://)(\S+)",
        lambda m: f"{m.group(1)}: s3://packaged-bucket/{m.group(2).strip('/')}.zip",
        TEMPLATE_PATH.read_text(encoding="utf-8"),
    )
    request = {
        "template": packaged,
        "parameters": {"Bitrix24ClientId": "local.abc.123", **overrides},
    }
    result = subprocess.run(
        [str(SAM_PYTHON), "-m", "deploy_rehearsal.sam_transform"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    transformed: dict[str, Any] = json.loads(result.stdout)
    return transformed


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    if not SAM_PYTHON.exists():
        pytest.skip("SAM CLI virtualenv (.venv-tools) absent")
    return _transformed(TEMPLATE_VARIANTS["defaults"])


def test_generated_schedules_carry_the_stack_name(transformed: dict[str, Any]) -> None:
    schedules = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::Scheduler::Schedule"]
    assert schedules
    for schedule in schedules:
        # Not SAM's fixed <Function><Event>, which collides across stacks (#3109).
        assert schedule["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-refresh-sweep"}
        assert "GroupName" not in schedule["Properties"]


def test_the_transform_keeps_the_retention_policies(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    kept = ("TokenKey", "DataKey", "PortalsTable", "ClientSecret", "TokenRescueQueue", "TokenRescueDLQ")
    lifecycle = tuple(q for q in ("LifecycleQueue", "LifecycleDLQ") if q in resources)
    for logical_id in kept + lifecycle:
        assert resources[logical_id]["DeletionPolicy"] == "RetainExceptOnCreate", logical_id
        assert resources[logical_id]["UpdateReplacePolicy"] == "Retain", logical_id
