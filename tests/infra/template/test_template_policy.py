"""template.yaml policy: least privilege written out, encryption everywhere, every async path dead-lettered."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from b24connector.credentials import CLIENT_SECRET_MISSING_METRIC, CLIENT_SECRET_NOT_SET
from operator_tools.cfn_yaml import function_environment, function_property, resources_of_type
from tests.support.template_support import (
    HANDLERS,
    REPO_ROOT,
    as_list,
    getatt,
    policy_statements,
    role_of,
    role_statements,
)

TOKEN_PURPOSE = "bitrix24-oauth-tokens"
TABLES = ("PortalsTable", "StatesTable", "RateLimitTable", "LeadEventsTable")
# The only actions allowed on a table's stream (Lambda's stream poller, PublisherFunction).
STREAM_ACTIONS = {
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
}
SQS_FUNCTIONS = {"RefreshWorkerFunction": "RefreshQueue", "TokenRescueFunction": "TokenRescueQueue"}
# Who may touch token ciphertext with TokenKey, and how: the vault's cipher seals with a data key
# (GenerateDataKey) and opens with Decrypt; Encrypt stays one release for code mid-deploy (decision 0002).
SEAL = {"kms:GenerateDataKey"}
TOKEN_KEY_USE = {
    "AuthorizeFunction": set(),
    "RefreshFunction": set(),
    "CallbackFunction": SEAL,
    "InstallFunction": SEAL,
    "RefreshWorkerFunction": {"kms:Decrypt", *SEAL},
    # Relaxed from "cannot encrypt" on purpose: a transparent refresh must store the rotated pair.
    "LeadsFunction": {"kms:Decrypt", *SEAL},
    "TokenRescueFunction": {"kms:Decrypt"},
    "LifecycleFunction": {"kms:Decrypt", *SEAL},
}
# Refreshes commit through the coordinator, which parks a pair it cannot commit on the rescue queue.
# Grants (callback, install) retry their conditional write and fail visibly instead: nothing to park.
# LifecycleFunction renews stored grants when Bitrix24 must confirm an unproven uninstall.
TOKEN_RESCUERS = {"RefreshWorkerFunction", "LeadsFunction", "LifecycleFunction"}
# Where the OAuth token endpoint is called (code exchange, refresh): the client secret is needed there only.
CLIENT_SECRET_READERS = {"CallbackFunction", "RefreshWorkerFunction", "LeadsFunction", "LifecycleFunction"}


def _has_wildcard(value: Any) -> bool:
    if isinstance(value, str):
        return "*" in value
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"]
        return "*" in (text if isinstance(text, str) else text[0])
    return False  # Ref / GetAtt name one resource


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources_of_type(template, "AWS::CloudWatch::Alarm").items()}


def _dimension(alarm: dict[str, Any], name: str) -> Any:
    for dimension in alarm.get("Dimensions", []):
        if dimension["Name"] == name:
            return dimension["Value"]
    return None


def _depth_alarm_for(template: dict[str, Any], queue_id: str) -> str | None:
    for alarm_id, alarm in _alarms(template).items():
        if (
            alarm.get("Namespace") == "AWS/SQS"
            and alarm.get("MetricName") == "ApproximateNumberOfMessagesVisible"
            and _dimension(alarm, "QueueName") == getatt(queue_id, "QueueName")
            and alarm.get("Threshold") == 0
            and alarm.get("ComparisonOperator") == "GreaterThanThreshold"
        ):
            return alarm_id
    return None


def _sub_index(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
        match = re.fullmatch(r"\$\{(\w+)\.Arn\}/index/(\w+)", value["Fn::Sub"])
        if match:
            return match.group(1), match.group(2)
    return None


def _token_key_actions(template: dict[str, Any], function_id: str) -> set[str]:
    actions: set[str] = set()
    for statement in role_statements(template, role_of(template, function_id)):
        if getatt("TokenKey") in statement.resources:
            actions.update(statement.actions)
    return actions


# --- wildcards ---------------------------------------------------------------------------------------


def test_every_wildcard_in_an_allow_statement_has_a_written_reason(template: dict[str, Any]) -> None:
    # Given every Allow statement of every role, key policy and queue policy
    unjustified = []
    for statement in policy_statements(template):
        if not statement.allow:
            continue  # a Deny with a wildcard only takes permissions away
        wild = [a for a in statement.actions if "*" in a] + [
            r for r in statement.resources if _has_wildcard(r)
        ]
        if not wild:
            continue
        # Then its Sid is justified, in words, in the owning resource's metadata
        reasons = (
            template["Resources"][statement.resource_id].get("Metadata", {}).get("WildcardJustifications", {})
        )
        reason = reasons.get(statement.sid, "") if statement.sid else ""
        if len(str(reason).split()) < 5:
            unjustified.append((statement.resource_id, statement.sid or "<no Sid>", wild))
    assert unjustified == []


def test_wildcard_justifications_are_not_stale(template: dict[str, Any]) -> None:
    # Given every WildcardJustifications entry
    for resource_id, resource in template["Resources"].items():
        for sid in resource.get("Metadata", {}).get("WildcardJustifications", {}):
            # Then it names an Allow statement of that resource that really holds a wildcard
            matches = [
                s for s in policy_statements(template) if s.resource_id == resource_id and s.sid == sid
            ]
            assert len(matches) == 1, f"{resource_id}: justification for unknown Sid {sid}"
            statement = matches[0]
            assert statement.allow
            assert any("*" in a for a in statement.actions) or any(
                _has_wildcard(r) for r in statement.resources
            )


def test_no_allow_statement_grants_every_action_except_the_key_admin_statements(
    template: dict[str, Any],
) -> None:
    # An unqualified "*" action is never acceptable; "kms:*" only in the key policies' root statement.
    for statement in policy_statements(template):
        if not statement.allow:
            continue
        assert "*" not in statement.actions, statement
        for action in statement.actions:
            if action.endswith(":*"):
                assert (statement.resource_id, statement.sid, action) in {
                    ("TokenKey", "AccountAdministersKey", "kms:*"),
                    ("DataKey", "AccountAdministersKey", "kms:*"),
                }


# --- roles ---------------------------------------------------------------------------------------------


def test_every_function_runs_as_its_own_written_out_role(template: dict[str, Any]) -> None:
    functions = resources_of_type(template, "AWS::Serverless::Function")
    roles = {function_id: role_of(template, function_id) for function_id in functions}
    # Then no two functions share a role
    assert len(set(roles.values())) == len(roles)
    for function_id, role_id in roles.items():
        props = functions[function_id]["Properties"]
        # And SAM adds nothing: no policy templates, no managed policies
        assert "Policies" not in props, function_id
        role = template["Resources"][role_id]["Properties"]
        assert "ManagedPolicyArns" not in role, role_id
        trust = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust == [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]


def test_roles_write_only_their_own_log_group(template: dict[str, Any]) -> None:
    for function_id in HANDLERS:
        log_group = function_property(template, function_id, "LoggingConfig")["LogGroup"]
        assert log_group == {"Ref": log_group["Ref"]}
        log_statements = [
            s
            for s in role_statements(template, role_of(template, function_id))
            if any(a.startswith("logs:") for a in s.actions)
        ]
        assert len(log_statements) == 1
        assert set(log_statements[0].actions) == {"logs:CreateLogStream", "logs:PutLogEvents"}
        assert log_statements[0].resources == [getatt(log_group["Ref"])]


def test_dynamodb_permissions_name_only_our_tables_and_indexes(template: dict[str, Any]) -> None:
    indexes = {
        table_id: {
            i["IndexName"]
            for i in template["Resources"][table_id]["Properties"].get("GlobalSecondaryIndexes", [])
        }
        for table_id in TABLES
    }
    for statement in policy_statements(template):
        if not any(a.startswith("dynamodb:") for a in statement.actions):
            continue
        for resource in statement.resources:
            index = _sub_index(resource)
            if index is not None:
                assert index[1] in indexes[index[0]], resource
                assert set(statement.actions) == {"dynamodb:Query"}, statement
            elif resource == "*":
                # Only ListStreams, which has no resource-level permissions (a justified wildcard).
                assert statement.actions == ["dynamodb:ListStreams"], statement
            elif isinstance(resource, dict) and resource.get("Fn::GetAtt", [None, None])[1] == "StreamArn":
                assert resource["Fn::GetAtt"][0] in TABLES, resource
                assert set(statement.actions) <= STREAM_ACTIONS, statement
            else:
                assert resource in [getatt(t) for t in TABLES], resource
                assert "dynamodb:Scan" not in statement.actions


def test_refresh_sweep_only_queries_the_due_index_and_enqueues(template: dict[str, Any]) -> None:
    statements = role_statements(template, role_of(template, "RefreshFunction"))
    dynamo = [s for s in statements if any(a.startswith("dynamodb:") for a in s.actions)]
    assert [(s.actions, s.resources) for s in dynamo] == [
        (["dynamodb:Query"], [{"Fn::Sub": "${PortalsTable.Arn}/index/RefreshDueIndex"}])
    ]
    sends = {
        str(r["Fn::GetAtt"][0]) for s in statements if "sqs:SendMessage" in s.actions for r in s.resources
    }
    assert sends == {"RefreshQueue", "RefreshSweepDLQ"}


def test_only_the_authorization_functions_touch_the_states_table_and_only_as_the_vault_needs(
    template: dict[str, Any],
) -> None:
    # AuthorizeFunction stores a new state; CallbackFunction marks it used (conditional UpdateItem) and
    # reads it once when it was refused. Nobody deletes states (the TTL does) or scans them.
    access: dict[str, set[str]] = {}
    for function_id in HANDLERS:
        for statement in role_statements(template, role_of(template, function_id)):
            if getatt("StatesTable") in statement.resources:
                access.setdefault(function_id, set()).update(statement.actions)
    assert access == {
        "AuthorizeFunction": {"dynamodb:PutItem"},
        "CallbackFunction": {"dynamodb:UpdateItem", "dynamodb:GetItem"},
    }


def test_only_refreshing_functions_can_send_to_the_rescue_queue(template: dict[str, Any]) -> None:
    for function_id in HANDLERS:
        statements = role_statements(template, role_of(template, function_id))
        can_rescue = any(
            "sqs:SendMessage" in s.actions and getatt("TokenRescueQueue") in s.resources for s in statements
        )
        assert can_rescue == (function_id in TOKEN_RESCUERS), function_id


def test_secrets_are_readable_only_where_needed(template: dict[str, Any], template_variant: str) -> None:
    readers: dict[str, set[str]] = {}
    for function_id in HANDLERS:
        for statement in role_statements(template, role_of(template, function_id)):
            if any(a.startswith("secretsmanager:") for a in statement.actions):
                assert statement.actions == ["secretsmanager:GetSecretValue"]
                for resource in statement.resources:
                    readers.setdefault(resource["Ref"], set()).add(function_id)
    # PKCE derives its verifier from its own key at /authorize and again at /callback; the cursor key
    # is LeadsFunction's alone, so rotating it never breaks an authorization in flight.
    pkce_on = template_variant == "pkce-on"
    assert set(readers) == {"ClientSecret", "CursorSigningSecret"} | ({"PkceKeySecret"} if pkce_on else set())
    assert readers["CursorSigningSecret"] == {"LeadsFunction"}
    if pkce_on:
        assert readers["PkceKeySecret"] == {"AuthorizeFunction", "CallbackFunction"}
    assert readers["ClientSecret"] == CLIENT_SECRET_READERS


# --- KMS -----------------------------------------------------------------------------------------------


def test_kms_statements_in_roles_are_scoped_to_our_keys_with_conditions(template: dict[str, Any]) -> None:
    for role_id in resources_of_type(template, "AWS::IAM::Role"):
        for statement in role_statements(template, role_id):
            if not any(a.startswith("kms:") for a in statement.actions):
                continue
            condition = statement.body.get("Condition", {})
            if statement.resources == [getatt("TokenKey")]:
                # Then TokenKey is usable only inside the token envelope: purpose + member_id, nothing else
                assert condition["StringEquals"] == {"kms:EncryptionContext:purpose": TOKEN_PURPOSE}
                keys = condition["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"]
                assert sorted(keys) == ["member_id", "purpose"]
                assert condition["Null"] == {"kms:EncryptionContext:member_id": "false"}
                assert set(statement.actions) <= {"kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"}
            else:
                # And DataKey only through the services that encrypt our data with it
                assert statement.resources == [getatt("DataKey")], (role_id, statement.sid)
                services = as_list(condition["StringEquals"]["kms:ViaService"])
                assert services
                for service in services:
                    assert re.fullmatch(
                        r"(dynamodb|sqs|secretsmanager)\.\$\{AWS::Region\}\.amazonaws\.com",
                        service["Fn::Sub"],
                    )


@pytest.mark.parametrize("function_id", sorted(TOKEN_KEY_USE))
def test_token_key_use_per_function(template: dict[str, Any], function_id: str) -> None:
    assert _token_key_actions(template, function_id) == TOKEN_KEY_USE[function_id]


def test_token_key_policy_denies_crypto_outside_the_token_envelope(template: dict[str, Any]) -> None:
    statements = [s for s in policy_statements(template) if s.resource_id == "TokenKey"]
    allows = [s for s in statements if s.allow]
    # Only the account root is allowed (it delegates use to IAM); no service or other principal
    assert [s.body["Principal"] for s in allows] == [
        {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    ]
    denies = {s.sid: s for s in statements if not s.allow}
    crypto = {"kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey"}
    for deny in denies.values():
        assert deny.body["Principal"] == {"AWS": "*"}
        assert crypto <= set(deny.actions)
    conditions = [d.body["Condition"] for d in denies.values()]
    assert {"StringNotEquals": {"kms:EncryptionContext:purpose": TOKEN_PURPOSE}} in conditions
    assert {"Null": {"kms:EncryptionContext:member_id": "true"}} in conditions


def _outlives_the_stack(resource: dict[str, Any]) -> None:
    # Kept on stack deletion and replacement, removed by a failed first create's rollback (which would
    # otherwise orphan it and leave a ROLLBACK_COMPLETE stack `sam deploy` cannot update).
    assert resource["DeletionPolicy"] == "RetainExceptOnCreate"
    assert resource["UpdateReplacePolicy"] == "Retain"  # UpdateReplacePolicy has no RetainExceptOnCreate


def test_keys_rotate_and_outlive_the_stack(template: dict[str, Any]) -> None:
    keys = resources_of_type(template, "AWS::KMS::Key")
    assert set(keys) == {"TokenKey", "DataKey"}
    for key in keys.values():
        assert key["Properties"]["EnableKeyRotation"] is True
        _outlives_the_stack(key)


# --- data at rest ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("table_id", TABLES)
def test_tables_are_on_demand_recoverable_protected_and_cmk_encrypted(
    template: dict[str, Any], table_id: str
) -> None:
    table = template["Resources"][table_id]
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    # A parameter, off by default: on a first create it would make a rollback fail (see README Deploy).
    assert props["DeletionProtectionEnabled"] == {"Ref": "TableDeletionProtection"}
    assert props["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": getatt("DataKey"),
    }
    _outlives_the_stack(table)


def test_table_deletion_protection_is_opt_in_after_the_first_deploy(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["TableDeletionProtection"]
    assert parameter["AllowedValues"] == ["true", "false"]
    assert parameter["Default"] == "false"


def test_secrets_are_cmk_encrypted_retained_and_never_in_the_template(template: dict[str, Any]) -> None:
    secrets = resources_of_type(template, "AWS::SecretsManager::Secret")
    assert set(secrets) == {"ClientSecret", "CursorSigningSecret", "PkceKeySecret"}
    for secret in secrets.values():
        assert secret["Properties"]["KmsKeyId"] == getatt("DataKey")
    for logical_id in ("ClientSecret", "CursorSigningSecret"):
        _outlives_the_stack(secrets[logical_id])
    # A PKCE verifier lives STATE_TTL_SECONDS at most: its key exists only with PKCE on, and nothing
    # needs it after the stack (or PKCE) is gone.
    assert secrets["PkceKeySecret"]["Condition"] == "PkceOn"
    assert "DeletionPolicy" not in secrets["PkceKeySecret"]
    for logical_id in ("CursorSigningSecret", "PkceKeySecret"):
        assert "SecretString" not in secrets[logical_id]["Properties"]
        assert secrets[logical_id]["Properties"]["GenerateSecretString"]["PasswordLength"] == 64


def test_the_client_secret_starts_as_the_marker_every_function_refuses(template: dict[str, Any]) -> None:
    # Not a usable random value: until `make put-secret`, the functions answer "client secret not set".
    props = template["Resources"]["ClientSecret"]["Properties"]
    assert props["SecretString"] == CLIENT_SECRET_NOT_SET
    assert "GenerateSecretString" not in props
    alarm = template["Resources"]["ClientSecretMissingAlarm"]["Properties"]
    (query,) = alarm["Metrics"]
    assert query["Expression"] == {
        "Fn::Sub": f'SELECT SUM({CLIENT_SECRET_MISSING_METRIC}) FROM "${{MetricsNamespace}}"'  # noqa: S608 - Metrics Insights
    }


# Queues that may hold the only copy of a token pair (rescued pairs; journaled lifecycle events).
TOKEN_HOLDING_QUEUES = ("TokenRescueQueue", "TokenRescueDLQ", "LifecycleQueue", "LifecycleDLQ")


def test_queues_holding_tokens_outlive_the_stack_like_the_tables(template: dict[str, Any]) -> None:
    queues = resources_of_type(template, "AWS::SQS::Queue")
    held = [queue_id for queue_id in TOKEN_HOLDING_QUEUES if queue_id in queues]
    assert {"TokenRescueQueue", "TokenRescueDLQ"} <= set(held)
    for queue_id in held:
        _outlives_the_stack(queues[queue_id])


def test_queues_are_cmk_encrypted_and_tls_only(template: dict[str, Any]) -> None:
    queues = resources_of_type(template, "AWS::SQS::Queue")
    for queue in queues.values():
        assert queue["Properties"]["KmsMasterKeyId"] == getatt("DataKey")
    (policy,) = resources_of_type(template, "AWS::SQS::QueuePolicy").values()
    assert sorted(q["Ref"] for q in policy["Properties"]["Queues"]) == sorted(queues)
    (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(r["Fn::GetAtt"][0] for r in deny["Resource"]) == sorted(queues)


# --- async paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("function_id", "queue_id"), sorted(SQS_FUNCTIONS.items()))
def test_every_sqs_event_source_is_dead_lettered_and_alarmed(
    template: dict[str, Any], function_id: str, queue_id: str
) -> None:
    # Given the function's SQS event source
    events = function_property(template, function_id, "Events")
    (event,) = [e["Properties"] for e in events.values() if e["Type"] == "SQS"]
    assert event["Queue"] == getatt(queue_id)
    assert event["BatchSize"] == 10
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # Then the queue redrives to a DLQ after 5 receives, keeps the DLQ 14 days, and alarms on it
    queue = template["Resources"][queue_id]["Properties"]
    redrive = queue["RedrivePolicy"]
    assert redrive["maxReceiveCount"] == 5
    dlq_id = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert template["Resources"][dlq_id]["Properties"]["MessageRetentionPeriod"] == 1209600
    assert _depth_alarm_for(template, dlq_id) is not None
    # And messages stay invisible for at least 6x the function timeout (AWS guidance)
    assert queue["VisibilityTimeout"] >= 6 * function_property(template, function_id, "Timeout")
    # And the role may consume exactly that queue
    consumes = [
        s
        for s in role_statements(template, role_of(template, function_id))
        if "sqs:ReceiveMessage" in s.actions
    ]
    assert [(sorted(s.actions), s.resources) for s in consumes] == [
        (["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"], [getatt(queue_id)])
    ]


def test_the_scheduled_sweep_is_dead_lettered_and_alarmed(template: dict[str, Any]) -> None:
    events = function_property(template, "RefreshFunction", "Events")
    (schedule,) = [e["Properties"] for e in events.values() if e["Type"] == "ScheduleV2"]
    assert schedule["ScheduleExpression"] == {"Ref": "RefreshSchedule"}
    assert template["Parameters"]["RefreshSchedule"]["Default"] == "rate(1 hour)"
    # Then both undeliverable schedules and failed asynchronous runs land in an alarmed DLQ
    scheduler_dlq = schedule["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    function_dlq = function_property(template, "RefreshFunction", "DeadLetterQueue")
    assert function_dlq["Type"] == "SQS"
    for dlq_id in {scheduler_dlq, function_dlq["TargetArn"]["Fn::GetAtt"][0]}:
        assert _depth_alarm_for(template, dlq_id) is not None
    # And the scheduler's role may start only the sweep
    scheduler_role = schedule["RoleArn"]["Fn::GetAtt"][0]
    invokes = [s for s in role_statements(template, scheduler_role) if "lambda:InvokeFunction" in s.actions]
    assert [s.resources for s in invokes] == [[getatt("RefreshFunction")]]


def test_every_dlq_has_a_depth_alarm(template: dict[str, Any]) -> None:
    queues = resources_of_type(template, "AWS::SQS::Queue")
    dlqs = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    dlqs.add("RefreshSweepDLQ")
    assert {dlq for dlq in dlqs if _depth_alarm_for(template, dlq) is None} == set()


def test_rescue_queue_age_is_alarmed(template: dict[str, Any]) -> None:
    ages = [
        a
        for a in _alarms(template).values()
        if a.get("MetricName") == "ApproximateAgeOfOldestMessage"
        and _dimension(a, "QueueName") == getatt("TokenRescueQueue", "QueueName")
    ]
    assert len(ages) == 1


@pytest.mark.parametrize("function_id", sorted(HANDLERS))
def test_the_rescue_window_outlasts_every_delivery_of_a_rescue(
    template: dict[str, Any], function_id: str
) -> None:
    # A lapsed refresh lease blocks refreshes for RESCUE_WINDOW_SECONDS so that a late rescue lands before
    # anyone spends the old refresh token again: the window must cover every delivery SQS makes.
    queue = resources_of_type(template, "AWS::SQS::Queue")["TokenRescueQueue"]["Properties"]
    deliveries = queue["RedrivePolicy"]["maxReceiveCount"] * queue["VisibilityTimeout"]
    window = float(function_environment(template, function_id)["RESCUE_WINDOW_SECONDS"])
    assert window >= deliveries


# --- functions -------------------------------------------------------------------------------------------


def test_refresh_worker_reserves_concurrency_only_when_asked(
    template: dict[str, Any], template_variant: str
) -> None:
    props = template["Resources"]["RefreshWorkerFunction"]["Properties"]
    # Reserving needs quota (100 unreserved + the reservation): 0, the default, reserves none.
    assert template["Parameters"]["WorkerReservedConcurrency"]["Default"] == 0
    if template_variant == "worker-reserved":
        assert props["ReservedConcurrentExecutions"] == {"Ref": "WorkerReservedConcurrency"}
    else:
        assert "ReservedConcurrentExecutions" not in props
    # The poller's ceiling bounds the OAuth pressure either way.
    assert template["Parameters"]["WorkerConcurrency"]["Default"] == 10
    (event,) = props["Events"].values()
    assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "WorkerConcurrency"}


def test_every_function_logs_to_its_own_encrypted_group_with_retention(template: dict[str, Any]) -> None:
    groups = set()
    for function_id in HANDLERS:
        group_id = function_property(template, function_id, "LoggingConfig")["LogGroup"]["Ref"]
        groups.add(group_id)
        group = template["Resources"][group_id]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert group["Properties"]["KmsKeyId"] == getatt("DataKey")
    assert len(groups) == len(HANDLERS)
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 90


def test_every_function_has_error_and_throttle_alarms(template: dict[str, Any]) -> None:
    for function_id in HANDLERS:
        metrics = {
            a["MetricName"]
            for a in _alarms(template).values()
            if a.get("Namespace") == "AWS/Lambda" and _dimension(a, "FunctionName") == {"Ref": function_id}
        }
        # A stream-fed function also alarms on how long changes wait (IteratorAge).
        streams = function_id == "PublisherFunction"
        assert metrics == {"Errors", "Throttles"} | ({"IteratorAge"} if streams else set()), function_id


def test_needs_reauth_alarm_watches_the_connector_metric(template: dict[str, Any]) -> None:
    (query,) = template["Resources"]["NeedsReauthAlarm"]["Properties"]["Metrics"]
    assert query["Expression"] == {"Fn::Sub": 'SELECT SUM(PortalNeedsReauth) FROM "${MetricsNamespace}"'}
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}


def test_every_alarm_notifies_the_optional_topic(template: dict[str, Any]) -> None:
    expected = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for alarm_id, alarm in _alarms(template).items():
        assert alarm["AlarmActions"] == expected, alarm_id
        assert alarm["OKActions"] == expected, alarm_id
    assert template["Conditions"]["HasAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }


def test_functions_routes_and_runtime_match_the_contract(template: dict[str, Any]) -> None:
    functions = resources_of_type(template, "AWS::Serverless::Function")
    assert {f: function_property(template, f, "Handler") for f in functions} == HANDLERS
    routes = set()
    for function_id in functions:
        for event in (function_property(template, function_id, "Events") or {}).values():
            if event["Type"] == "HttpApi":
                assert event["Properties"]["ApiId"] == {"Ref": "HttpApi"}
                routes.add((event["Properties"]["Method"], event["Properties"]["Path"], function_id))
    assert routes == {
        ("GET", "/authorize", "AuthorizeFunction"),
        ("GET", "/callback", "CallbackFunction"),
        ("POST", "/install", "InstallFunction"),
        ("POST", "/events", "InstallFunction"),
    }
    assert function_property(template, "LeadsFunction", "Events") is None
    globals_ = template["Globals"]["Function"]
    assert (globals_["Runtime"], globals_["Architectures"], globals_["CodeUri"], globals_["Tracing"]) == (
        "python3.13",
        ["arm64"],
        "functions/",
        "Active",
    )


def test_http_api_is_throttled_and_access_logged_without_query_strings(template: dict[str, Any]) -> None:
    api = template["Resources"]["HttpApi"]["Properties"]
    assert set(api["DefaultRouteSettings"]) == {"ThrottlingRateLimit", "ThrottlingBurstLimit"}
    logs = api["AccessLogSettings"]
    assert logs["DestinationArn"] == getatt("ApiAccessLogGroup")
    # /callback carries the authorization code in its query string
    assert "querystring" not in logs["Format"].lower()
    assert "$context.path" not in logs["Format"]


def test_outputs_for_the_operator(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    for name in ("ApiUrl", "CallbackUrl", "InstallUrl", "EventsUrl", "ClientSecretArn"):
        assert name in outputs
    assert outputs["ClientSecretArn"]["Value"] == {"Ref": "ClientSecret"}
    assert outputs["CallbackUrl"]["Value"]["Fn::Sub"].endswith("/callback")
    for function_id in HANDLERS:
        assert outputs[f"{function_id}Arn"]["Value"] == getatt(function_id)


# --- checkov skips ---------------------------------------------------------------------------------------


def test_checkov_skips_are_the_same_in_the_config_and_the_template(template: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO_ROOT / ".checkov.yaml").read_text(encoding="utf-8"))
    configured = set(config.get("skip-check", []))
    in_template: set[str] = set()
    for resource_id, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            # Each in-template skip carries its reason
            assert len(str(skip.get("comment", "")).split()) >= 5, (resource_id, skip)
            in_template.add(skip["id"])
    assert configured == in_template
    assert config["framework"] == ["cloudformation"]
    assert config["file"] == ["template.yaml"]


# --- deploy hazards (issue 11) ----------------------------------------------------------------------


def test_every_schedule_is_named_after_its_stack(template: dict[str, Any]) -> None:
    # SAM names a ScheduleV2 <Function><Event> in the default group: a second stack in the same account
    # and region (prod after dev) would fail with "already exists" (aws/serverless-application-model#3109).
    schedules = [
        event["Properties"]
        for function in resources_of_type(template, "AWS::Serverless::Function").values()
        for event in (function["Properties"].get("Events") or {}).values()
        if event["Type"] == "ScheduleV2"
    ]
    assert schedules
    for props in schedules:
        name = props["Name"]["Fn::Sub"]
        assert name.startswith("${AWS::StackName}-")
        # Scheduler names are at most 64 characters: room for a 40-character stack name.
        assert len(name.replace("${AWS::StackName}", "x" * 40)) <= 64


def test_no_role_holds_grants_nothing_uses(template: dict[str, Any]) -> None:
    for role_id in resources_of_type(template, "AWS::IAM::Role"):
        for statement in role_statements(template, role_id):
            # Nothing describes DataKey at run time: DynamoDB, SQS and Secrets Manager use Decrypt and
            # GenerateDataKey with the caller's credentials.
            assert "kms:DescribeKey" not in statement.actions, (role_id, statement.sid)
    (pacing,) = [s for s in role_statements(template, "LeadsRole") if s.sid == "PacePortalRequests"]
    # DynamoDB answers a failed condition with the item: the rate limiter needs no read on AWS.
    assert pacing.actions == ["dynamodb:UpdateItem"]


def test_pkce_follows_its_parameter_with_the_grants_it_needs(
    template: dict[str, Any], template_variant: str
) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["PKCE_ENABLED"] == {"Ref": "PkceEnabled"}
    assert template["Parameters"]["PkceEnabled"]["Default"] == "false"
    pkce_on = template_variant == "pkce-on"
    assert env["PKCE_SECRET_ID"] == ({"Ref": "PkceKeySecret"} if pkce_on else "")
    for role_id in ("AuthorizeRole", "CallbackRole"):
        statements = role_statements(template, role_id)
        reads_key = any(
            "secretsmanager:GetSecretValue" in s.actions and {"Ref": "PkceKeySecret"} in s.resources
            for s in statements
        )
        assert reads_key == pkce_on, role_id
        assert not any({"Ref": "CursorSigningSecret"} in s.resources for s in statements), role_id
        (data_key,) = [s for s in statements if s.sid == "DataKeyViaOurServices"]
        services = [
            v["Fn::Sub"] for v in as_list(data_key.body["Condition"]["StringEquals"]["kms:ViaService"])
        ]
        # Secrets Manager decrypts the secret with DataKey as the caller.
        assert ("secretsmanager.${AWS::Region}.amazonaws.com" in services) == (
            pkce_on or role_id == "CallbackRole"
        ), role_id
