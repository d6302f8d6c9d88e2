"""The IAM check can fail: deliberately broken templates, unmapped calls and stale allow-list entries.

Each test runs the real check (SAM transform + @cloud-copilot/iam-simulate) on template.yaml and on a
copy with one defect, with the same small recording, and asserts that the defect, and only the
defect, adds the finding. The recorder itself is tested in a child process with botocore's Stubber.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from iam_check.check import Report, run_check

from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.integration

TEMPLATE = REPO_ROOT / "template.yaml"
TOKEN_CONTEXT = {"purpose": "bitrix24-oauth-tokens", "member_id": "a1b2c3"}


def call(
    function: str, service: str, operation: str, param: str, env_var: str, **extra: Any
) -> dict[str, Any]:
    """One line as local_stack.aws_calls writes it (the value itself does not matter, its variable does)."""
    return {
        "function": function,
        "service": service,
        "operation": operation,
        "params": {param: f"physical-{env_var}", **extra},
        "env": {param: [env_var]},
        "test": "tests/infra/iam_check/test_iam_check.py",
    }


# The calls CallbackFunction, InstallFunction and RefreshFunction make on their main paths.
RECORDING = [
    call("CallbackFunction", "dynamodb", "UpdateItem", "TableName", "STATES_TABLE"),
    call("CallbackFunction", "dynamodb", "GetItem", "TableName", "STATES_TABLE"),
    call("CallbackFunction", "dynamodb", "GetItem", "TableName", "PORTALS_TABLE"),
    call("CallbackFunction", "dynamodb", "PutItem", "TableName", "PORTALS_TABLE"),
    call(
        "CallbackFunction", "kms", "GenerateDataKey", "KeyId", "TOKEN_KEY_ID", EncryptionContext=TOKEN_CONTEXT
    ),
    call("CallbackFunction", "secretsmanager", "GetSecretValue", "SecretId", "CLIENT_SECRET_ID"),
    call("InstallFunction", "dynamodb", "GetItem", "TableName", "PORTALS_TABLE"),
    call("InstallFunction", "dynamodb", "PutItem", "TableName", "PORTALS_TABLE"),
    call("RefreshFunction", "dynamodb", "Query", "TableName", "PORTALS_TABLE", IndexName="RefreshDueIndex"),
    call("RefreshFunction", "sqs", "SendMessageBatch", "QueueUrl", "REFRESH_QUEUE_URL"),
]


def check(tmp_path: Path, edit: Callable[[str], str] | None = None, recording: list[dict[str, Any]] | None = None,
          expected_unused: Path | None = None) -> Report:  # fmt: skip
    """Run the check on template.yaml, or on a copy changed by `edit` (which must change it)."""
    template = TEMPLATE
    if edit is not None:
        text = TEMPLATE.read_text(encoding="utf-8")
        changed = edit(text)
        assert changed != text, "the edit did not apply: the template changed under the test"
        template = tmp_path / "template.yaml"
        template.write_text(changed, encoding="utf-8")
    return run_check(template, RECORDING if recording is None else recording, env="dev",
                     expected_unused=expected_unused)  # fmt: skip


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The unchanged template with the recording: no denial, no error."""
    report = check(tmp_path_factory.mktemp("baseline"))
    assert report.denials == [], report.text()
    assert report.errors == [], report.text()
    return report


def only_in(report: Report, baseline: Report, attribute: str) -> list[str]:
    """Findings of `report` that the unchanged template does not have."""
    before = {str(item) for item in getattr(baseline, attribute)}
    return [str(item) for item in getattr(report, attribute) if str(item) not in before]


def test_a_role_missing_one_action_is_a_denial(tmp_path: Path, baseline: Report) -> None:
    report = check(tmp_path, lambda t: t.replace(
        "Action: [dynamodb:UpdateItem, dynamodb:GetItem]\n                Resource: !GetAtt StatesTable.Arn",
        "Action: [dynamodb:GetItem]\n                Resource: !GetAtt StatesTable.Arn"))  # fmt: skip
    new = only_in(report, baseline, "denials")
    assert len(new) == 1, report.text()
    assert "CallbackRole dynamodb:UpdateItem on StatesTable" in new[0]
    assert "ImplicitlyDenied" in new[0]
    assert not report.ok


def test_a_key_policy_with_a_wrong_encryption_context_condition_is_a_denial(
    tmp_path: Path, baseline: Report
) -> None:
    report = check(tmp_path, lambda t: t.replace(
        "StringNotEquals:\n                kms:EncryptionContext:purpose: bitrix24-oauth-tokens",
        "StringNotEquals:\n                kms:EncryptionContext:purpose: bitrix24-oauth-token"))  # fmt: skip
    new = only_in(report, baseline, "denials")
    assert len(new) == 1, report.text()
    assert new[0].startswith("ExplicitlyDenied: CallbackRole kms:GenerateDataKey on TokenKey")
    assert "DenyCryptoWithoutTokenPurpose" in new[0]


def test_a_role_condition_on_the_wrong_context_key_is_a_denial(tmp_path: Path, baseline: Report) -> None:
    # Only CallbackRole's and InstallRole's EncryptTokens statements are followed by ReadClientSecret.
    report = check(tmp_path, lambda t: t.replace(
        '"Null":\n                    kms:EncryptionContext:member_id: "false"\n              - Sid: ReadClientSecret',
        '"Null":\n                    kms:EncryptionContext:tenant_id: "false"\n              - Sid: ReadClientSecret'))  # fmt: skip
    new = only_in(report, baseline, "denials")
    assert [d.split(" {")[0] for d in new] == [
        "ImplicitlyDenied: CallbackRole kms:GenerateDataKey on TokenKey"
    ], report.text()


def test_an_index_query_against_the_table_arn_is_a_denial(tmp_path: Path, baseline: Report) -> None:
    report = check(tmp_path, lambda t: t.replace(
        "Resource: !Sub ${PortalsTable.Arn}/index/RefreshDueIndex", "Resource: !GetAtt PortalsTable.Arn"))  # fmt: skip
    new = only_in(report, baseline, "denials")
    assert len(new) == 1, report.text()
    assert "RefreshRole dynamodb:Query on PortalsTable/index/RefreshDueIndex" in new[0]


def test_a_service_made_call_without_its_grant_is_a_denial(tmp_path: Path, baseline: Report) -> None:
    # No recorded call involves the scheduler: its DLQ delivery is one of the documented service calls.
    report = check(tmp_path, lambda t: t.replace(
        "              - Sid: DeadLetterUndeliveredRuns\n                Effect: Allow\n                Action: sqs:SendMessage\n"
        "                Resource: !GetAtt RefreshSweepDLQ.Arn\n", ""))  # fmt: skip
    new = only_in(report, baseline, "denials")
    assert len(new) == 1, report.text()
    assert "RefreshSchedulerRole sqs:SendMessage on RefreshSweepDLQ" in new[0]
    assert "Scheduler DLQ" in new[0]


def test_an_extra_unused_grant_is_found(tmp_path: Path, baseline: Report) -> None:
    report = check(
        tmp_path,
        lambda t: t.replace(
            "(LifecycleFunction applies them once Bitrix24 confirms).\n"
            "              - Sid: StorePortal\n"
            "                Effect: Allow\n"
            "                Action: [dynamodb:GetItem, dynamodb:PutItem]",
            "(LifecycleFunction applies them once Bitrix24 confirms).\n"
            "              - Sid: StorePortal\n"
            "                Effect: Allow\n"
            "                Action: [dynamodb:GetItem, dynamodb:PutItem, dynamodb:DeleteItem]",
        ),
    )  # fmt: skip  (InstallRole's StorePortal statement, found by its comment)
    assert only_in(report, baseline, "unused") == [
        "InstallRole dynamodb:DeleteItem PortalsTable (statement StorePortal of policy install)"
    ]
    assert report.denials == []


def test_used_grants_are_not_reported_unused(baseline: Report) -> None:
    unused = {grant.key() for grant in baseline.unused}
    for used in [
        ("CallbackRole", "dynamodb:UpdateItem", "StatesTable"),
        ("CallbackRole", "kms:GenerateDataKey", "TokenKey"),
        ("CallbackRole", "kms:Decrypt", "DataKey"),  # DynamoDB and Secrets Manager decrypt for it
        ("RefreshRole", "sqs:SendMessage", "RefreshQueue"),
        ("RefreshRole", "kms:GenerateDataKey", "DataKey"),  # SQS SSE for the sender
        ("RefreshRole", "sqs:SendMessage", "RefreshSweepDLQ"),  # Lambda's async DLQ
        ("RefreshWorkerRole", "sqs:ReceiveMessage", "RefreshQueue"),  # the SQS poller
        ("RefreshSchedulerRole", "lambda:InvokeFunction", "RefreshFunction"),
    ]:
        assert used not in unused, baseline.text()
    # Granted, and no recorded call of this recording needs it.
    assert ("LeadsRole", "dynamodb:Query", "PortalsTable/index/DomainIndex") in unused


def test_a_call_the_template_cannot_explain_is_an_error(tmp_path: Path) -> None:
    report = check(tmp_path, recording=[
        *RECORDING, call("InstallFunction", "dynamodb", "GetItem", "TableName", "SOME_OTHER_TABLE")])  # fmt: skip
    assert len(report.errors) == 1, report.text()
    assert "SOME_OTHER_TABLE" in report.errors[0]
    assert not report.ok


def test_expected_unused_entries_tolerate_only_what_they_name_and_go_stale(
    tmp_path: Path, baseline: Report
) -> None:
    listed = tmp_path / "expected_unused.txt"
    listed.write_text(
        "# comment\nLeadsRole dynamodb:UpdateItem RateLimitTable\nCallbackRole dynamodb:UpdateItem StatesTable\n",
        encoding="utf-8",
    )
    report = check(tmp_path, expected_unused=listed)
    assert [str(g) for g in report.expected_unused] == [
        "LeadsRole dynamodb:UpdateItem RateLimitTable (statement PacePortalRequests of policy leads)"
    ]
    assert report.stale_expected == ["CallbackRole dynamodb:UpdateItem StatesTable"]
    assert "STALE" in report.text()
    assert not report.ok
    assert len(report.unexpected_unused) == len(baseline.unused) - 1


RECORDER_CHILD = textwrap.dedent(
    """
    import json, sys, threading, types
    import botocore.session
    from botocore.stub import Stubber
    sys.path.insert(0, sys.argv[2])
    from local_stack import aws_calls

    aws_calls.install(sys.argv[1], template="template.yaml", handlers={"FakeFunction": "fake_handlers.handler"})
    import os
    os.environ["PORTALS_TABLE"] = "portals-physical"

    def get(client):
        with Stubber(client) as stub:
            stub.add_response("get_item", {}, {"TableName": "portals-physical", "Key": {"k": {"S": "v"}}})
            client.get_item(TableName="portals-physical", Key={"k": {"S": "v"}})

    module = types.ModuleType("fake_handlers")
    exec(
        "def handler(client, get, threading):\\n"
        "    get(client)\\n"
        "    worker = threading.Thread(target=get, args=(client,))\\n"
        "    worker.start(); worker.join()\\n",
        module.__dict__,
    )
    client = botocore.session.get_session().create_client("dynamodb", region_name="eu-central-1",
        aws_access_key_id="x", aws_secret_access_key="x")
    get(client)  # outside any handler: not the function's call
    module.handler(client, get, threading)
    """
)


def test_the_recorder_attributes_handler_calls_and_their_threads_only(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    subprocess.run(
        [sys.executable, "-c", RECORDER_CHILD, str(log), str(REPO_ROOT / "infra")],
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [(x["function"], x["service"], x["operation"]) for x in lines] == [
        ("FakeFunction", "dynamodb", "GetItem")
    ] * 2
    assert all(x["params"] == {"TableName": "portals-physical"} for x in lines)
    assert all(x["env"] == {"TableName": ["PORTALS_TABLE"]} for x in lines)
    assert all(x["template"] == str((tmp_path / "template.yaml").resolve()) for x in lines)
