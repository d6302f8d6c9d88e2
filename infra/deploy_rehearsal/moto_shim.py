"""moto's server with the rehearsal's workarounds for where moto's CloudFormation differs from AWS.

Rehearsal only: nothing here is used by `make deploy` against AWS. Each workaround writes one JSON
line to the file named by --workaround-log whenever it acts, so the rehearsal can say which ones it
needed. Run by ``python -m deploy_rehearsal.moto_server --workaround-log FILE [moto_process options]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import string
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from local_stack import moto_process

REPO_ROOT = Path(__file__).resolve().parents[2]
SAM_PYTHON = REPO_ROOT / ".venv-tools" / "bin" / "python"
SERVERLESS_TRANSFORM = "AWS::Serverless-2016-10-31"

# Resource types the transformed template (and SAM CLI's managed bucket stack) use that moto 5.2's
# CloudFormation cannot create; "modelled" ones are created in moto's own service backends, the rest
# are accepted and recorded without effect.
MODELLED_TYPES = ("AWS::SecretsManager::Secret", "AWS::Scheduler::Schedule")
RECORDED_TYPES = (
    "AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Stage",
    "AWS::Lambda::EventInvokeConfig",
    "AWS::CloudWatch::Alarm",
    "AWS::SQS::QueuePolicy",
    "AWS::S3::BucketPolicy",
    "AWS::Scheduler::ScheduleGroup",
)

_log_lock = threading.Lock()
_log_path: list[Path] = []  # the --workaround-log file, once set


def record(workaround: str, detail: str) -> None:
    """Append one applied workaround to the log the rehearsal reads."""
    if not _log_path:
        return
    with _log_lock, _log_path[0].open("a", encoding="utf-8") as log:
        log.write(json.dumps({"workaround": workaround, "detail": detail}) + "\n")


def _is_serverless(template: str) -> bool:
    return SERVERLESS_TRANSFORM in template


def expand_serverless(template: str, parameters: dict[str, str], region: str) -> str:
    """The template after the AWS::Serverless transform (samtranslator run by SAM CLI's Python)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AWS_ENDPOINT_URL")}
    env["AWS_DEFAULT_REGION"] = region
    env["PYTHONPATH"] = str(REPO_ROOT / "infra")
    result = subprocess.run(
        [str(SAM_PYTHON), "-m", "deploy_rehearsal.sam_transform"],
        input=json.dumps({"template": template, "parameters": parameters}),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"AWS::Serverless transform failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _patch_change_sets() -> None:
    from moto.cloudformation.models import CloudFormationBackend

    original_create = CloudFormationBackend.create_change_set
    original_execute = CloudFormationBackend.execute_change_set

    def create_change_set(self: CloudFormationBackend, *args: Any, **kwargs: Any) -> tuple[str, str]:
        template = kwargs.get("template")
        if isinstance(template, str) and _is_serverless(template):
            parameters = dict(kwargs.get("parameters") or {})
            kwargs["template"] = expand_serverless(template, parameters, self.region_name)
            record("serverless-transform", f"{kwargs.get('stack_name')}: expanded with samtranslator")
        return original_create(self, *args, **kwargs)

    def execute_change_set(
        self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None
    ) -> None:
        matching = [
            cs
            for cs in self.change_sets.values()
            if change_set_name == cs.change_set_id
            or (
                change_set_name == cs.change_set_name
                and stack_name in (None, cs.stack.name, cs.stack.stack_id)
            )
        ]
        try:
            original_execute(self, change_set_name, stack_name)
        except Exception as exc:
            if not matching:
                raise
            # moto raises the resource's error from ExecuteChangeSet (an answer SAM CLI cannot even
            # parse); CloudFormation accepts the call, fails the resource and rolls the stack back.
            change_set = matching[-1]
            stack = change_set.stack
            creating = change_set.change_set_type == "CREATE"
            stack._add_stack_event(
                "CREATE_FAILED" if creating else "UPDATE_FAILED",
                resource_status_reason=f"{type(exc).__name__}: {exc}",
            )
            stack.status = "ROLLBACK_COMPLETE" if creating else "UPDATE_ROLLBACK_COMPLETE"
            change_set.execution_status = "EXECUTE_FAILED"
            record("failed-execution-reported", f"{stack.name}: {type(exc).__name__}: {exc}")
            return
        # moto builds a stack's outputs from the template it was created with, which for a change
        # set is empty; CloudFormation evaluates them after every create/update.
        for change_set in matching[-1:]:
            stack = change_set.stack
            stack.template_dict = change_set.template_dict
            stack.output_map = stack._create_output_map()
            record("change-set-outputs", f"{stack.name}: outputs evaluated after ExecuteChangeSet")

    CloudFormationBackend.create_change_set = create_change_set  # type: ignore[method-assign]
    CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]


def _patch_table_updates() -> None:
    from moto.dynamodb.models.table import Table

    def update_in_place(
        cls: type[Table], original_resource: Table, new_resource_name: str, **_: Any
    ) -> Table:
        # moto has no CloudFormation update for tables and drops them from the stack; CloudFormation
        # updates a table in place (with its data) unless its name or key schema changes.
        record("table-update-in-place", original_resource.name)
        return original_resource

    Table.update_from_cloudformation_json = classmethod(update_in_place)  # type: ignore[method-assign,assignment,arg-type]


def _patch_event_bus_ref() -> None:
    from moto.events.models import EventBus

    def bus_name(bus: EventBus) -> str:
        # CloudFormation's Ref of AWS::Events::EventBus is the bus name; moto's model has no
        # physical_resource_id, so Ref handed the object itself to a function's environment and
        # every GetFunctionConfiguration of that function failed to serialise.
        return bus.name

    EventBus.physical_resource_id = property(bus_name)  # type: ignore[attr-defined]
    record("event-bus-ref-is-its-name", "AWS::Events::EventBus")


def _patch_template_urls() -> None:
    from urllib.parse import urlparse

    from moto.cloudformation import models, responses, utils

    original = utils.get_stack_from_s3_url

    def get_stack_from_s3_url(template_url: str, account_id: str, partition: str) -> str:
        # SAM CLI builds a path-style URL on the endpoint it was given (http://127.0.0.1:<port>/bucket/key);
        # moto reads path style only for "localhost" and s3*.amazonaws.com and takes "127" as the bucket.
        parts = urlparse(template_url)
        if parts.hostname in ("127.0.0.1", "::1"):
            record("template-url-path-style", template_url.rsplit("/", 1)[-1])
            return original(
                template_url.replace(parts.netloc, f"localhost:{parts.port}", 1), account_id, partition
            )
        return original(template_url, account_id, partition)

    utils.get_stack_from_s3_url = get_stack_from_s3_url
    setattr(models, "get_stack_from_s3_url", get_stack_from_s3_url)  # noqa: B010 - imported name, not exported
    setattr(responses, "get_stack_from_s3_url", get_stack_from_s3_url)  # noqa: B010 - imported name, not exported


def _generated_secret(spec: dict[str, Any]) -> str:
    """A value shaped by GenerateSecretString's PasswordLength/Exclude* (what Secrets Manager makes)."""
    alphabet = string.ascii_letters + string.digits
    if not spec.get("ExcludePunctuation"):
        alphabet += "!#$%&()*+,-./:;<=>?@[]^_{|}~"
    length = int(spec.get("PasswordLength", 32))
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _model_classes() -> list[type[Any]]:
    """moto CloudFormation models for the resource types moto lacks (built on first use: moto loads late)."""
    return [_secret_model(), _schedule_model(), *(_recorded_model(t) for t in RECORDED_TYPES)]


def _secret_model() -> type[Any]:
    from moto.core.common_models import CloudFormationModel
    from moto.secretsmanager.models import secretsmanager_backends

    class RehearsalSecret(CloudFormationModel):
        """AWS::SecretsManager::Secret created in moto's Secrets Manager (Ref = ARN)."""

        def __init__(self, arn: str, name: str) -> None:
            self.arn = arn
            self.name = name

        @staticmethod
        def cloudformation_name_type() -> str:
            return "Name"

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::SecretsManager::Secret"

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return attr == "Id"

        @property
        def physical_resource_id(self) -> str:
            return self.arn

        def get_cfn_attribute(self, attribute_name: str) -> str:
            return self.arn

        @classmethod
        def create_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **_: Any,
        ) -> RehearsalSecret:
            props = cloudformation_json.get("Properties", {})
            value = props.get("SecretString")
            if value is None:
                value = _generated_secret(props.get("GenerateSecretString") or {})
            backend = secretsmanager_backends[account_id][region_name]
            backend.create_secret(
                name=resource_name,
                secret_string=value,
                secret_binary=None,
                description=props.get("Description"),
                tags=None,
                kms_key_id=props.get("KmsKeyId"),
                client_request_token=None,
                replica_regions=[],
                force_overwrite=False,
            )
            arn = backend.describe_secret(resource_name).arn
            record("model:AWS::SecretsManager::Secret", f"{resource_name} created in moto's Secrets Manager")
            return cls(arn, resource_name)

        @classmethod
        def update_from_cloudformation_json(  # type: ignore[override]
            cls, original_resource: RehearsalSecret, **_: Any
        ) -> RehearsalSecret:
            return original_resource

        @classmethod
        def delete_from_cloudformation_json(
            cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str
        ) -> None:
            return None

    return RehearsalSecret


def _schedule_model() -> type[Any]:
    from moto.core.common_models import CloudFormationModel
    from moto.scheduler.models import scheduler_backends

    class RehearsalSchedule(CloudFormationModel):
        """AWS::Scheduler::Schedule created in moto's Scheduler, which refuses a duplicate name."""

        def __init__(self, arn: str, name: str, group: str | None) -> None:
            self.arn = arn
            self.name = name
            self.group = group

        @staticmethod
        def cloudformation_name_type() -> str:
            return "Name"

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::Scheduler::Schedule"

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return attr == "Arn"

        @property
        def physical_resource_id(self) -> str:
            return self.name

        def get_cfn_attribute(self, attribute_name: str) -> str:
            return self.arn

        @classmethod
        def create_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **_: Any,
        ) -> RehearsalSchedule:
            props = cloudformation_json.get("Properties", {})
            group = props.get("GroupName")
            schedule = scheduler_backends[account_id][region_name].create_schedule(
                description=props.get("Description"),
                end_date=props.get("EndDate"),
                flexible_time_window=props.get("FlexibleTimeWindow") or {"Mode": "OFF"},
                group_name=group,
                kms_key_arn=props.get("KmsKeyArn"),
                name=resource_name,
                schedule_expression=props.get("ScheduleExpression"),
                schedule_expression_timezone=props.get("ScheduleExpressionTimezone"),
                start_date=props.get("StartDate"),
                state=props.get("State") or "ENABLED",
                target=props.get("Target") or {},
                action_after_completion=None,
            )
            record(
                "model:AWS::Scheduler::Schedule",
                f"{group or 'default'}/{resource_name} created in moto's Scheduler",
            )
            return cls(schedule.arn, resource_name, group)

        @classmethod
        def update_from_cloudformation_json(
            cls,
            original_resource: RehearsalSchedule,
            new_resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
        ) -> RehearsalSchedule:
            backend = scheduler_backends[account_id][region_name]
            group = cloudformation_json.get("Properties", {}).get("GroupName")
            if (new_resource_name, group) == (original_resource.name, original_resource.group):
                # Same name and group: CloudFormation updates the schedule in place.
                backend.delete_schedule(original_resource.group, original_resource.name)
                return cls.create_from_cloudformation_json(
                    new_resource_name, cloudformation_json, account_id, region_name
                )
            # A new name or group is a replacement: the new schedule first, as CloudFormation does.
            new = cls.create_from_cloudformation_json(
                new_resource_name, cloudformation_json, account_id, region_name
            )
            backend.delete_schedule(original_resource.group, original_resource.name)
            return new

        @classmethod
        def delete_from_cloudformation_json(
            cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str
        ) -> None:
            group = cloudformation_json.get("Properties", {}).get("GroupName")
            scheduler_backends[account_id][region_name].delete_schedule(group, resource_name)

    return RehearsalSchedule


def _recorded_model(resource_type: str) -> type[Any]:
    """A class that accepts `resource_type` and records it (moto has no backend for it)."""
    from moto.core.common_models import CloudFormationModel

    def create(
        cls: Any, resource_name: str, cloudformation_json: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        record(f"accepted-without-effect:{resource_type}", resource_name)
        instance = cls()
        instance.name = resource_name
        return instance

    def update(cls: Any, original_resource: Any, new_resource_name: str, *args: Any, **kwargs: Any) -> Any:
        record(f"accepted-without-effect:{resource_type}", new_resource_name)
        return original_resource

    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__doc__": f"{resource_type}: accepted, not created (no moto backend).",
        "cloudformation_name_type": staticmethod(lambda: ""),
        "cloudformation_type": staticmethod(lambda: resource_type),
        "has_cfn_attr": classmethod(lambda cls, attr: True),
        "physical_resource_id": property(lambda self: self.name),
        "get_cfn_attribute": lambda self, attr: f"{self.name}.{attr}",
        "create_from_cloudformation_json": classmethod(create),
        "update_from_cloudformation_json": classmethod(update),
        "delete_from_cloudformation_json": classmethod(lambda cls, *a, **k: None),
    }
    return type("Recorded" + resource_type.replace("::", ""), (CloudFormationModel,), namespace)


# Lambda's quota for an established account; MOTO_LAMBDA_CONCURRENCY_QUOTA makes moto enforce it too.
DEFAULT_CONCURRENCY_QUOTA = "1000"


def account_settings(region: str) -> dict[str, Any]:
    """GetAccountSettings as Lambda answers it, from moto's functions and the quota moto enforces."""
    from moto.awslambda.models import lambda_backends
    from moto.core.models import DEFAULT_ACCOUNT_ID

    quota = int(os.environ.get("MOTO_LAMBDA_CONCURRENCY_QUOTA", DEFAULT_CONCURRENCY_QUOTA))
    functions = list(lambda_backends[DEFAULT_ACCOUNT_ID][region].list_functions())
    reserved = sum(int(fn.reserved_concurrency or 0) for fn in functions)
    return {
        "AccountLimit": {
            "TotalCodeSize": 80530636800,
            "CodeSizeUnzipped": 262144000,
            "CodeSizeZipped": 52428800,
            "ConcurrentExecutions": quota,
            "UnreservedConcurrentExecutions": quota - reserved,
        },
        "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": len(functions)},
    }


def lambda_account_settings(app: moto_process.WsgiApp) -> moto_process.WsgiApp:
    """Answer Lambda GetAccountSettings, which moto 5.2 leaves "Not yet implemented"."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", "")).rstrip("/")
        authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
        if (
            environ.get("REQUEST_METHOD") != "GET"
            or not path.endswith("/account-settings")
            or "/lambda/" not in authorization
        ):
            return app(environ, start_response)
        # Credential=<key>/<date>/<region>/lambda/aws4_request
        region = authorization.split("/lambda/", maxsplit=1)[0].rsplit("/", 1)[-1]
        body = json.dumps(account_settings(region)).encode()
        record("lambda-account-settings", f"GetAccountSettings answered in {region}")
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return wrapped


def install_workarounds(log_path: Path | None) -> list[str]:
    """Patch moto in this process; the names of the types now handled."""
    _log_path[:] = [log_path] if log_path else []
    from moto.cloudformation import parsing

    classes = _model_classes()
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
    _patch_change_sets()
    _patch_template_urls()
    _patch_table_updates()
    _patch_event_bus_ref()
    os.environ.setdefault("MOTO_LAMBDA_CONCURRENCY_QUOTA", DEFAULT_CONCURRENCY_QUOTA)
    moto_process.EXTRA_MIDDLEWARE.append(lambda_account_settings)
    return [cls.cloudformation_type() for cls in classes]


def main(argv: list[str] | None = None) -> int:
    """Install the workarounds, then run moto's server as local_stack.moto_process does."""
    parser = argparse.ArgumentParser(prog="python -m deploy_rehearsal.moto_shim")
    parser.add_argument("--workaround-log", type=Path, required=True)
    args, rest = parser.parse_known_args(argv)
    install_workarounds(args.workaround_log)
    return moto_process.main(rest)
