"""IAM requests to evaluate: the recorded calls of each function, and the calls AWS makes for the roles.

A recorded call names its resource by the value it passed (table name, queue URL, key ARN, secret ARN)
and by the environment variables that held that value; the function's environment in the transformed
template says which resource each variable is, so the request gets that resource's ARN as
CloudFormation would create it. A value from nowhere in the function's environment cannot be mapped
and is reported, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iam_check.stack import Role, Stack, StackError
from local_stack.template import ACCOUNT_ID

# botocore operation -> IAM action where they differ. SQS authorizes a batch as its single action
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html);
# Lambda's Invoke API is the lambda:InvokeFunction action.
IAM_ACTION = {
    ("sqs", "SendMessageBatch"): "SendMessage",
    ("sqs", "DeleteMessageBatch"): "DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "ChangeMessageVisibility",
    ("lambda", "Invoke"): "InvokeFunction",
}
_RESOURCE_PARAMETER = {
    "dynamodb": "TableName",
    "kms": "KeyId",
    "sqs": "QueueUrl",
    "secretsmanager": "SecretId",
    "lambda": "FunctionName",
    "logs": "LogGroupName",
    "sns": "TopicArn",
    "events": "EventBusName",  # PutEvents: the one bus every entry names (local_stack.aws_calls)
}


@dataclass(frozen=True)
class Request:
    """One request IAM would authorize, and where it comes from."""

    role: str  # logical ID of the role whose credentials sign it; "" for a service principal
    principal: str
    action: str
    resource: str  # ARN ("*" for actions without resource-level permissions)
    context: tuple[tuple[str, Any], ...]
    resource_policy: str | None  # logical ID of the key or queue whose policy applies
    origin: str  # "recorded" or the service behaviour, with its AWS documentation link

    def context_dict(self) -> dict[str, Any]:
        """The request context as the simulator takes it."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in self.context}


@dataclass
class Recording:
    """The recorded calls, grouped per function, with what could not be mapped to a resource."""

    calls: dict[str, int] = field(default_factory=dict)  # function -> calls
    requests: dict[Request, int] = field(default_factory=dict)  # request -> how many calls made it
    unresolved: list[str] = field(default_factory=list)


def _ctx(**values: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((key, tuple(v) if isinstance(v, list) else v) for key, v in values.items()))


class RequestBuilder:
    """Builds the requests of one transformed stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.roles: dict[str, Role] = stack.roles()
        self.functions = {fn: stack.props(fn) for fn in stack.of_type("AWS::Lambda::Function")}
        self._env = {
            fn: (props.get("Environment") or {}).get("Variables") or {}
            for fn, props in self.functions.items()
        }

    # ------------------------------------------------------------ helpers
    def role_of_function(self, function: str) -> Role:
        """The execution role of a function."""
        role = self.stack.logical_from((self.stack.resources[function].get("Properties") or {}).get("Role"))
        if role not in self.roles:
            raise StackError(f"{function}: its Role is not an AWS::IAM::Role of the template")
        return self.roles[role]

    def _base(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # SDKs and AWS services use TLS; the queue policy denies requests without it.
        return {"aws:SecureTransport": "true", "aws:RequestedRegion": self.stack.region, **(extra or {})}

    def _request(  # noqa: PLR0917 - one request's fields, always passed in this order
        self, role: Role, session: str, action: str, resource: str, context: Mapping[str, Any], origin: str
    ) -> Request:
        logical = self.stack.logical_for(resource) if resource != "*" else None
        if logical is None and "/index/" in resource:
            logical = self.stack.logical_for(resource.partition("/index/")[0])
        policy_of = None
        if logical is not None and self.stack.type_of(logical) in ("AWS::KMS::Key", "AWS::SQS::Queue"):
            policy_of = logical
        return Request(
            role.logical_id,
            role.session_arn(session),
            action,
            resource,
            _ctx(**self._base(context)),
            policy_of,
            origin,
        )

    def _kms(  # noqa: PLR0917 - one KMS use's fields, always passed in this order
        self, role: Role, session: str, key: str, actions: Iterable[str], ctx: Mapping[str, str],
             via: str, origin: str) -> Iterator[Request]:  # fmt: skip
        context: dict[str, Any] = {
            "kms:ViaService": f"{via}.{self.stack.region}.amazonaws.com",
            "kms:CallerAccount": ACCOUNT_ID,
            "kms:EncryptionContextKeys": sorted(ctx),
            **{f"kms:EncryptionContext:{k}": v for k, v in ctx.items()},
        }
        for action in actions:
            yield self._request(role, session, f"kms:{action}", self.stack.arn(key), context, origin)

    def _key_of(self, logical: str, prop: str, nested: str | None = None) -> str | None:
        props = self.stack.props(logical)
        value = (props.get(nested) or {}).get(prop) if nested else props.get(prop)
        if value is None:
            return None
        key = self.stack.logical_from(value)
        if key is None:
            alias = [a for a in self.stack.of_type("AWS::KMS::Alias") if self.stack.name(a) == value]
            if alias:
                key = self.stack.logical_from(self.stack.props(alias[0]).get("TargetKeyId"))
        if key is None or self.stack.type_of(key) != "AWS::KMS::Key":
            raise StackError(f"{logical}.{prop}: {value!r} is not a KMS key of this template")
        return key

    # ------------------------------------------------------------ recorded calls
    def _resource_of_call(self, function: str, call: Mapping[str, Any]) -> str:
        service = str(call["service"])
        param = _RESOURCE_PARAMETER.get(service)
        params = call.get("params") or {}
        if param is None or param not in params:
            raise StackError(f"{service}:{call['operation']} names no resource the check knows how to read")
        candidates = {
            self.stack.logical_for(str(self._env[function][var]))
            for var in (call.get("env") or {}).get(param, [])
            if var in self._env[function]
        } - {None}
        if len(candidates) != 1:
            raise StackError(
                f"{service}:{call['operation']} {param}={params[param]!r} is not one resource the template "
                f"gives {function} (environment variables holding it: {(call.get('env') or {}).get(param)})"
            )
        logical = str(candidates.pop())
        arn = self.stack.arn(logical)
        if service == "dynamodb" and params.get("IndexName"):
            arn = f"{arn}/index/{params['IndexName']}"
        return arn

    def from_call(self, call: Mapping[str, Any]) -> list[Request]:
        """The requests one recorded call makes: its own, and the KMS calls its service makes with it."""
        function = str(call["function"])
        if function not in self.functions:
            raise StackError(
                f"recorded calls of {function}, which is not a function of the transformed template"
            )
        role = self.role_of_function(function)
        service, operation = str(call["service"]), str(call["operation"])
        if "RequestItems" in (call.get("params") or {}):
            raise StackError(
                f"{service}:{operation} spans tables; the check does not model batch/transact calls"
            )
        action = f"{service}:{IAM_ACTION.get((service, operation), operation)}"
        resource = self._resource_of_call(function, call)
        context: dict[str, Any] = {}
        encryption_context = (call.get("params") or {}).get("EncryptionContext")
        if service == "kms":
            context["kms:CallerAccount"] = ACCOUNT_ID
            if encryption_context is not None:
                context["kms:EncryptionContextKeys"] = sorted(encryption_context)
                context.update({f"kms:EncryptionContext:{k}": v for k, v in encryption_context.items()})
        requests = [self._request(role, function, action, resource, context, "recorded")]
        requests.extend(self._service_kms_for_call(role, function, service, operation, resource))
        return requests

    def _service_kms_for_call(
        self, role: Role, session: str, service: str, operation: str, resource: str
    ) -> Iterator[Request]:
        logical = self.stack.logical_for(resource.partition("/index/")[0])
        if logical is None:
            return
        if service == "dynamodb":
            # DynamoDB decrypts the table key with the caller's credentials, context tableName +
            # subscriberId: https://docs.aws.amazon.com/kms/latest/developerguide/services-dynamodb.html
            key = self._key_of(logical, "KMSMasterKeyId", nested="SSESpecification")
            if key is not None:
                ctx = {
                    "aws:dynamodb:tableName": self.stack.name(logical),
                    "aws:dynamodb:subscriberId": ACCOUNT_ID,
                }
                yield from self._kms(role, session, key, ["Decrypt"], ctx, "dynamodb",
                                     "DynamoDB table key (services-dynamodb.html)")  # fmt: skip
        elif service == "sqs":
            # Producers need GenerateDataKey + Decrypt, consumers Decrypt, context aws:sqs:arn:
            # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-key-management.html
            key = self._key_of(logical, "KmsMasterKeyId")
            if key is not None:
                sending = operation in ("SendMessage", "SendMessageBatch")
                actions = ["GenerateDataKey", "Decrypt"] if sending else ["Decrypt"]
                if sending or operation == "ReceiveMessage":
                    yield from self._kms(role, session, key, actions, {"aws:sqs:arn": self.stack.arn(logical)},
                                         "sqs", "SQS SSE (sqs-key-management.html)")  # fmt: skip
        elif service == "secretsmanager" and operation == "GetSecretValue":
            # Secrets Manager decrypts with the caller's credentials, context SecretARN + SecretVersionId:
            # https://docs.aws.amazon.com/secretsmanager/latest/userguide/security-encryption.html
            key = self._key_of(logical, "KmsKeyId")
            if key is not None:
                ctx = {
                    "SecretARN": self.stack.arn(logical),
                    "SecretVersionId": "00000000-0000-0000-0000-000000000000",
                }
                yield from self._kms(role, session, key, ["Decrypt"], ctx, "secretsmanager",
                                     "Secrets Manager (security-encryption.html)")  # fmt: skip

    def recorded(self, lines: Iterable[Mapping[str, Any]]) -> Recording:
        """Requests of every recorded call, counted; calls that cannot be mapped are listed."""
        recording = Recording()
        for call in lines:
            function = str(call.get("function"))
            recording.calls[function] = recording.calls.get(function, 0) + 1
            try:
                for request in self.from_call(call):
                    recording.requests[request] = recording.requests.get(request, 0) + 1
            except StackError as exc:
                recording.unresolved.append(f"{function} ({call.get('test')}): {exc}")
        return recording

    # ------------------------------------------------------------ calls AWS services make for the roles
    def service_requests(self) -> list[Request]:
        """What Lambda, its SQS poller, EventBridge Scheduler, CloudWatch Logs and X-Ray do with our roles."""
        requests: list[Request] = []
        for function, props in self.functions.items():
            role = self.role_of_function(function)
            requests += self._logs_and_tracing(function, role, props)
            requests += self._async_dead_letters(function, role, props)
        requests += self._event_source_mappings()
        requests += self._schedules()
        requests += self._log_group_encryption()
        return requests

    def _logs_and_tracing(self, function: str, role: Role, props: Mapping[str, Any]) -> list[Request]:
        # Lambda writes the function's logs with the execution role: CreateLogStream + PutLogEvents on
        # its log group (CreateLogGroup only when the group does not exist; ours are template resources):
        # https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs.html
        group = (props.get("LoggingConfig") or {}).get(
            "LogGroup"
        ) or f"/aws/lambda/{self.stack.name(function)}"
        stream = f"arn:aws:logs:{self.stack.region}:{ACCOUNT_ID}:log-group:{group}:log-stream:2026/01/01/[$LATEST]0"
        origin = "Lambda logging (monitoring-cloudwatchlogs.html)"
        out = [
            self._request(role, function, f"logs:{a}", stream, {}, origin)
            for a in ("CreateLogStream", "PutLogEvents")
        ]
        if (props.get("TracingConfig") or {}).get("Mode") == "Active":
            # Active tracing: Lambda sends segments with the execution role (no resource-level permissions):
            # https://docs.aws.amazon.com/lambda/latest/dg/services-xray.html
            origin = "Lambda active tracing (services-xray.html)"
            out += [self._request(role, function, f"xray:{a}", "*", {}, origin)
                    for a in ("PutTraceSegments", "PutTelemetryRecords")]  # fmt: skip
        return out

    def _send_to_queue(self, role: Role, session: str, queue_arn: str, origin: str) -> list[Request]:
        queue = self.stack.logical_for(queue_arn)
        if queue is None:
            raise StackError(f"{session}: dead-letter target {queue_arn} is not a queue of the template")
        out = [self._request(role, session, "sqs:SendMessage", queue_arn, {}, origin)]
        key = self._key_of(queue, "KmsMasterKeyId")
        if key is not None:
            out += self._kms(
                role, session, key, ["GenerateDataKey", "Decrypt"], {"aws:sqs:arn": queue_arn}, "sqs", origin
            )
        return out

    def _async_dead_letters(self, function: str, role: Role, props: Mapping[str, Any]) -> list[Request]:
        # Lambda sends failed asynchronous events to the DLQ / on-failure destination with the
        # execution role: https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html
        origin = "Lambda async dead-letter (invocation-async-retain-records.html)"
        targets = []
        if (dlq := (props.get("DeadLetterConfig") or {}).get("TargetArn")) and ":sqs:" in dlq:
            targets.append(dlq)
        for config in self.stack.of_type("AWS::Lambda::EventInvokeConfig"):
            raw = self.stack.resources[config].get("Properties") or {}
            if self.stack.logical_from(raw.get("FunctionName")) == function:
                failure = (self.stack.props(config).get("DestinationConfig") or {}).get("OnFailure") or {}
                if ":sqs:" in str(failure.get("Destination", "")):
                    targets.append(failure["Destination"])
        return [r for target in targets for r in self._send_to_queue(role, function, target, origin)]

    def _event_source_mappings(self) -> list[Request]:
        # The SQS poller reads and deletes with the execution role:
        # https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html#events-sqs-permissions
        origin = "Lambda SQS event source (with-sqs.html)"
        out: list[Request] = []
        for mapping in self.stack.of_type("AWS::Lambda::EventSourceMapping"):
            raw = self.stack.resources[mapping].get("Properties") or {}
            props = self.stack.props(mapping)
            function = self.stack.logical_from(raw.get("FunctionName"))
            source = str(props.get("EventSourceArn", ""))
            if function is not None and ":dynamodb:" in source and "/stream/" in source:
                out += self._stream_mapping(self.role_of_function(function), function, source, props)
                continue
            if function is None or ":sqs:" not in source:
                raise StackError(
                    f"{mapping}: only SQS and DynamoDB stream sources of template functions are modelled"
                )
            role = self.role_of_function(function)
            for action in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes"):
                out.append(self._request(role, function, f"sqs:{action}", source, {}, origin))
            queue = self.stack.logical_for(source)
            key = self._key_of(queue, "KmsMasterKeyId") if queue else None
            if key is not None:
                out += self._kms(role, function, key, ["Decrypt"], {"aws:sqs:arn": source}, "sqs", origin)
        return out

    def _stream_mapping(
        self, role: Role, function: str, source: str, props: Mapping[str, Any]
    ) -> list[Request]:
        # The DynamoDB stream poller reads with the execution role (DescribeStream, GetRecords,
        # GetShardIterator, ListStreams) and sends a failed batch's record to the on-failure destination:
        # https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html#events-dynamodb-permissions and
        # https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html
        origin = "Lambda DynamoDB stream event source (with-ddb.html)"
        out = [
            self._request(role, function, f"dynamodb:{action}", source, {}, origin)
            for action in ("DescribeStream", "GetRecords", "GetShardIterator")
        ]
        # ListStreams has no resource-level permissions (IAM: resource "*").
        out.append(self._request(role, function, "dynamodb:ListStreams", "*", {}, origin))
        table = self.stack.logical_for(source)
        key = self._key_of(table, "KMSMasterKeyId", nested="SSESpecification") if table else None
        if table is not None and key is not None:
            # Stream records of a table under a customer managed key are decrypted like its items.
            ctx = {"aws:dynamodb:tableName": self.stack.name(table), "aws:dynamodb:subscriberId": ACCOUNT_ID}
            out += self._kms(role, function, key, ["Decrypt"], ctx, "dynamodb", origin)
        failure = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        if failure and ":sqs:" in str(failure):
            out += self._send_to_queue(
                role,
                function,
                str(failure),
                "Lambda stream on-failure destination (services-dynamodb-errors.html)",
            )
        return out

    def _schedules(self) -> list[Request]:
        # EventBridge Scheduler invokes the target and sends undeliverable events to the DLQ with the
        # schedule's execution role: https://docs.aws.amazon.com/scheduler/latest/UserGuide/setting-up.html
        # and https://docs.aws.amazon.com/scheduler/latest/UserGuide/configuring-schedule-dlq.html
        out: list[Request] = []
        for schedule in self.stack.of_type("AWS::Scheduler::Schedule"):
            target = self.stack.props(schedule).get("Target") or {}
            role_logical = self.stack.logical_for(str(target.get("RoleArn")))
            if role_logical not in self.roles:
                raise StackError(f"{schedule}: its RoleArn is not a role of the template")
            role = self.roles[role_logical]
            arn = str(target.get("Arn", ""))
            if ":lambda:" not in arn:
                raise StackError(f"{schedule}: only Lambda targets are modelled")
            out.append(self._request(role, schedule, "lambda:InvokeFunction", arn, {},
                                     "Scheduler target (setting-up.html)"))  # fmt: skip
            if dlq := (target.get("DeadLetterConfig") or {}).get("Arn"):
                out += self._send_to_queue(
                    role, schedule, dlq, "Scheduler DLQ (configuring-schedule-dlq.html)"
                )
        return out

    def _log_group_encryption(self) -> list[Request]:
        # CloudWatch Logs uses the key as the service principal logs.<region>.amazonaws.com with the
        # context aws:logs:arn = the log group ARN:
        # https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html
        out: list[Request] = []
        principal = f"logs.{self.stack.region}.amazonaws.com"
        for group in self.stack.of_type("AWS::Logs::LogGroup"):
            key = self._key_of(group, "KmsKeyId")
            if key is None:
                continue
            context = _ctx(**self._base({
                "kms:EncryptionContext:aws:logs:arn": self.stack.arn(group),
                "kms:EncryptionContextKeys": ["aws:logs:arn"],
            }))  # fmt: skip
            for action in ("Encrypt", "Decrypt", "GenerateDataKey"):
                out.append(Request("", principal, f"kms:{action}", self.stack.arn(key), context, key,
                                   f"CloudWatch Logs encryption of {group} (encrypt-log-data-kms.html)"))  # fmt: skip
        return out


def read_recording(path: Path) -> list[dict[str, Any]]:
    """The JSON lines written by local_stack.aws_calls."""
    if not path.exists():
        raise StackError(
            f"{path} does not exist: run the test suites with --aws-call-log {path} first (make test)"
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
