"""`make preflight ENV=...`: can this account and region take the stack? Run before `make deploy`.

Checks, read-only:
- Lambda concurrency: Lambda refuses a reservation that leaves fewer than 100 unreserved executions,
  so the account quota must cover 100 + every ReservedConcurrentExecutions the template asks for
  (new accounts often have a quota of 10);
- runtime and architecture: every function's Runtime/Architectures pair is accepted by Lambda in the
  region (the SDK's list and the region's own answer to a ListLayers filter on that pair);
- the stack: a ROLLBACK_COMPLETE stack must be deleted first; on an existing stack, whether the client
  secret has been put (`make put-secret`), else the functions answer "client secret not set".

Exit 0 when nothing blocks a deploy (warnings included), 1 otherwise.

    python -m operator_tools.preflight --env dev
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from b24connector.credentials import CLIENT_SECRET_NOT_SET
from operator_tools.cfn_yaml import load_template
from operator_tools.samconfig import DEFAULT_SAMCONFIG, SamConfigError, parameter_overrides, stack_and_region

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
# Lambda keeps this many executions unreserved in every account and region (PutFunctionConcurrency).
MIN_UNRESERVED = 100
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
SECRET_OUTPUT = "ClientSecretArn"

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    """One check's verdict, printed as one line."""

    level: Level
    check: str
    message: str


# --- the template, as the environment's parameters make it -------------------------------------------


def parameter_values(template: Mapping[str, Any], overrides: Mapping[str, str]) -> dict[str, str]:
    """Every template parameter's value for a deploy with `overrides` (defaults otherwise)."""
    values = {
        name: str(spec["Default"])
        for name, spec in template.get("Parameters", {}).items()
        if "Default" in spec
    }
    values.update(overrides)
    return values


def _condition(template: Mapping[str, Any], expression: Any, values: Mapping[str, str]) -> Any:  # noqa: PLR0911 - one return per operator
    if not isinstance(expression, dict):
        return str(expression).lower() if isinstance(expression, bool) else str(expression)
    (kind, argument), *_ = expression.items()
    if kind == "Ref":
        return values.get(argument, "")
    if kind == "Condition":
        return _condition(template, template["Conditions"][argument], values)
    if kind == "Fn::Equals":
        left, right = (_condition(template, side, values) for side in argument)
        return str(left) == str(right)
    if kind == "Fn::Not":
        return not _condition(template, argument[0], values)
    if kind == "Fn::And":
        return all(_condition(template, item, values) for item in argument)
    if kind == "Fn::Or":
        return any(_condition(template, item, values) for item in argument)
    raise ValueError(f"unsupported {kind} in a condition")


def resolve(template: Mapping[str, Any], value: Any, values: Mapping[str, str]) -> Any:
    """A property value with Ref-to-parameter and Fn::If evaluated; None for AWS::NoValue."""
    if isinstance(value, dict) and len(value) == 1:
        (kind, argument), *_ = value.items()
        if kind == "Ref" and argument == "AWS::NoValue":
            return None
        if kind == "Ref" and argument in values:
            return values[argument]
        if kind == "Fn::If":
            name, when_true, when_false = argument
            chosen = _condition(template, template["Conditions"][name], values)
            return resolve(template, when_true if chosen else when_false, values)
    return value


def function_settings(template: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Per function: Runtime, Architectures and ReservedConcurrentExecutions (Globals applied)."""
    shared = template.get("Globals", {}).get("Function", {})
    settings: dict[str, dict[str, Any]] = {}
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") not in FUNCTION_TYPES:
            continue
        props = {**shared, **resource.get("Properties", {})}
        reserved = resolve(template, props.get("ReservedConcurrentExecutions"), values)
        settings[logical_id] = {
            "Runtime": resolve(template, props.get("Runtime"), values),
            "Architectures": [resolve(template, a, values) for a in props.get("Architectures") or ["x86_64"]],
            "Reserved": int(reserved) if reserved not in (None, "") else 0,
        }
    return settings


# --- decisions (pure; unit-tested) --------------------------------------------------------------------


def concurrency_finding(
    account_limit: int, unreserved: int, reserved_by_stack_now: int, planned: Mapping[str, int]
) -> Finding:
    """Will Lambda accept the planned reservations? (the stack's current ones are given back first)."""
    wanted = sum(planned.values())
    left = unreserved + reserved_by_stack_now - wanted
    detail = ", ".join(f"{name} {count}" for name, count in sorted(planned.items()) if count) or "none"
    # Lambda checks the 100-unreserved floor only when a reservation is made.
    if wanted and left < MIN_UNRESERVED:
        return Finding(
            "fail",
            "concurrency",
            f"account quota {account_limit}, {unreserved} unreserved; the stack reserves {wanted} ({detail}), "
            f"leaving {left} < {MIN_UNRESERVED} that Lambda keeps unreserved. Set WorkerReservedConcurrency=0 "
            "in samconfig.toml's parameter_overrides, or raise the quota (Service Quotas: Lambda "
            "'Concurrent executions').",
        )
    message = (
        f"account quota {account_limit}, {unreserved} unreserved; reservations {detail} leave {left} "
        f"(Lambda needs {MIN_UNRESERVED})"
        if wanted
        else f"account quota {account_limit}, {unreserved} unreserved; the stack reserves none"
    )
    if account_limit < 2 * MIN_UNRESERVED:
        return Finding(
            "warn",
            "concurrency",
            f"{message}; a quota this low (new account) throttles every function of the account under "
            "load: ask for an increase before production.",
        )
    return Finding("ok", "concurrency", message)


def runtime_finding(
    runtime: str, architecture: str, region: str, known: Sequence[str], accepted: bool | None
) -> Finding:
    """Can Lambda in `region` run `runtime` on `architecture`? (`accepted`: the region's own answer)."""
    pair = f"{runtime} on {architecture}"
    if runtime not in known:
        return Finding(
            "fail",
            "runtime",
            f"{pair}: the SDK does not know {runtime}; update SAM CLI/boto3 or the template",
        )
    if accepted is False:
        return Finding("fail", "runtime", f"{pair}: Lambda in {region} refuses it")
    if accepted is None:
        return Finding("warn", "runtime", f"{pair}: Lambda in {region} could not be asked; deploy will tell")
    return Finding("ok", "runtime", f"{pair}: accepted by Lambda in {region}")


def stack_finding(stack_name: str, status: str | None) -> Finding:
    """Can `sam deploy` create or update the stack in this state?"""
    if status is None:
        return Finding("ok", "stack", f"{stack_name} does not exist yet: the deploy creates it")
    if status == "ROLLBACK_COMPLETE":
        return Finding(
            "fail",
            "stack",
            f"{stack_name} is ROLLBACK_COMPLETE (its first create failed) and cannot be updated: delete it "
            f"(aws cloudformation delete-stack --stack-name {stack_name}); RetainExceptOnCreate left nothing behind.",
        )
    if status.endswith("_IN_PROGRESS"):
        return Finding("fail", "stack", f"{stack_name} is {status}: wait until it settles")
    if status.endswith("_FAILED"):
        return Finding(
            "fail", "stack", f"{stack_name} is {status}: resolve it in the CloudFormation console first"
        )
    return Finding("ok", "stack", f"{stack_name} is {status}: the deploy updates it")


def secret_finding(stack_exists: bool, value: str | None, error: str | None = None) -> Finding:
    """Has `make put-secret` stored the client secret? (`value` is compared, never shown)."""
    if not stack_exists:
        return Finding(
            "ok", "client secret", "no stack yet: run `make put-secret` right after the first deploy"
        )
    if error is not None:
        return Finding("warn", "client secret", f"could not be read ({error}); check it after the deploy")
    if value is None or value == CLIENT_SECRET_NOT_SET:
        return Finding(
            "warn",
            "client secret",
            "client secret not set: run `make put-secret` (until then /callback answers 503 and refreshes "
            "wait; metric ClientSecretMissing)",
        )
    return Finding("ok", "client secret", "set")


def deletion_protection_finding(stack_exists: bool, values: Mapping[str, str]) -> Finding | None:
    """TableDeletionProtection on a first create would make a failed create's rollback fail."""
    if values.get("TableDeletionProtection") == "true" and not stack_exists:
        return Finding(
            "warn",
            "tables",
            "TableDeletionProtection=true on a first deploy: if the create fails, its rollback cannot remove "
            "the tables (ROLLBACK_FAILED). Turn it on after the first successful deploy.",
        )
    return None


# --- AWS reads ----------------------------------------------------------------------------------------


def _stack(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ValidationError":  # does not exist
            return None
        raise
    return dict(stacks[0]) if stacks else None


def _reserved_by_stack(cloudformation: Any, lambda_client: Any, stack_name: str) -> int:
    total = 0
    paginator = cloudformation.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for resource in page["StackResourceSummaries"]:
            if resource["ResourceType"] != "AWS::Lambda::Function" or not resource.get("PhysicalResourceId"):
                continue
            answer = lambda_client.get_function_concurrency(FunctionName=resource["PhysicalResourceId"])
            total += int(answer.get("ReservedConcurrentExecutions") or 0)
    return total


def _region_accepts(lambda_client: Any, runtime: str, architecture: str) -> bool | None:
    try:
        lambda_client.list_layers(CompatibleRuntime=runtime, CompatibleArchitecture=architecture, MaxItems=1)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("InvalidParameterValueException", "ValidationException"):
            return False
        return None
    except BotoCoreError:
        return None
    return True


def run_checks(
    env: str, session: Any, template_path: Path = DEFAULT_TEMPLATE, samconfig: Path = DEFAULT_SAMCONFIG
) -> list[Finding]:
    """Every check for `env`, in the order they print."""
    stack_name, region = stack_and_region(env, samconfig)
    region = region or session.region_name
    template = load_template(template_path)
    values = parameter_values(template, parameter_overrides(env, samconfig))
    functions = function_settings(template, values)
    cloudformation = session.client("cloudformation", region_name=region)
    lambda_client = session.client("lambda", region_name=region)
    findings: list[Finding] = []

    stack = _stack(cloudformation, stack_name)
    status = stack["StackStatus"] if stack else None
    findings.append(stack_finding(stack_name, status))

    settings = lambda_client.get_account_settings()
    reserved_now = _reserved_by_stack(cloudformation, lambda_client, stack_name) if stack else 0
    findings.append(
        concurrency_finding(
            int(settings["AccountLimit"]["ConcurrentExecutions"]),
            int(settings["AccountLimit"]["UnreservedConcurrentExecutions"]),
            reserved_now,
            {name: spec["Reserved"] for name, spec in functions.items()},
        )
    )

    known = lambda_client.meta.service_model.shape_for("Runtime").enum
    pairs = sorted({(spec["Runtime"], arch) for spec in functions.values() for arch in spec["Architectures"]})
    for runtime, architecture in pairs:
        findings.append(
            runtime_finding(
                runtime, architecture, region, known, _region_accepts(lambda_client, runtime, architecture)
            )
        )

    protection = deletion_protection_finding(stack is not None, values)
    if protection:
        findings.append(protection)

    if stack is None or status == "ROLLBACK_COMPLETE":
        findings.append(secret_finding(False, None))
    else:
        outputs = {o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs") or []}
        arn = outputs.get(SECRET_OUTPUT)
        if not arn:
            findings.append(secret_finding(True, None, f"the stack has no {SECRET_OUTPUT} output"))
        else:
            try:
                value = session.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)
                findings.append(secret_finding(True, str(value.get("SecretString") or "")))
            except ClientError as exc:
                findings.append(secret_finding(True, None, exc.response["Error"]["Code"]))
    return findings


def report(findings: Sequence[Finding], out: Callable[[str], None] = print) -> int:
    """Print the findings; 1 if any blocks the deploy."""
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for finding in findings:
        out(f"  {marks[finding.level]}  {finding.check}: {finding.message}")
    blockers = [f for f in findings if f.level == "fail"]
    warnings = [f for f in findings if f.level == "warn"]
    if blockers:
        out(f"preflight: {len(blockers)} blocker(s); fix them before `make deploy`.")
        return 1
    out(f"preflight: nothing blocks a deploy ({len(warnings)} warning(s)).")
    return 0


def main(
    argv: Sequence[str] | None = None, *, session_factory: Callable[..., Any] = boto3.session.Session
) -> int:
    """Command-line entry: run the checks for --env and print them; 0 when nothing blocks."""
    parser = argparse.ArgumentParser(
        prog="python -m operator_tools.preflight", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--env", default="dev", help="samconfig.toml environment (dev)")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help=argparse.SUPPRESS)
    parser.add_argument("--samconfig", type=Path, default=DEFAULT_SAMCONFIG, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        stack_name, region = stack_and_region(args.env, args.samconfig)
        session = session_factory(region_name=region) if region else session_factory()
        print(f"preflight {args.env}: stack {stack_name} in {region or session.region_name}")
        findings = run_checks(args.env, session, args.template, args.samconfig)
    except SamConfigError as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(
            f"preflight: AWS refused a read ({exc.response['Error']['Code']}); are you signed in?",
            file=sys.stderr,
        )
        return 1
    except BotoCoreError as exc:
        print(f"preflight: cannot reach AWS ({type(exc).__name__})", file=sys.stderr)
        return 1
    return report(findings)


if __name__ == "__main__":
    sys.exit(main())
