"""`make deploy-rehearsal`: run the real deploy path against a local moto server and check the result.

Steps (each runs the Makefile target an operator runs, with AWS_ENDPOINT_URL pointing at moto):
preflight dev → deploy dev (first: client id from BITRIX24_CLIENT_ID) → check → preflight dev (secret
not set yet) → put-secret dev → deploy dev again (client id from the stack) → check, secret kept →
preflight prod → deploy prod (same account and region; confirms the change set as an operator would)
→ check both stacks side by side. Exit 0 only when every step held.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3

from operator_tools.cfn_yaml import load_template
from operator_tools.samconfig import stack_and_region

REPO_ROOT = Path(__file__).resolve().parents[2]
REHEARSAL_CLIENT_ID = "local.rehearsal0000000.00000001"
REHEARSAL_SECRET = "rehearsal-client-secret-not-a-real-one"
LOOPBACK = "127.0.0.1"

# What each workaround means, for the report (keys as moto_shim records them; prefixes for types).
WORKAROUND_TEXT = {
    "serverless-transform": (
        "moto has no AWS::Serverless transform: each change-set template was expanded with SAM CLI's "
        "samtranslator before moto parsed it"
    ),
    "change-set-outputs": (
        "moto does not evaluate Outputs of a stack created or updated by a change set: they were "
        "evaluated after ExecuteChangeSet"
    ),
    "lambda-account-settings": (
        "moto has no Lambda GetAccountSettings (preflight): answered from moto's functions and a "
        "1000-execution quota, which moto then enforces on reservations (MOTO_LAMBDA_CONCURRENCY_QUOTA)"
    ),
    "template-url-path-style": (
        "moto reads a path-style TemplateURL only on localhost or amazonaws.com: SAM's "
        "http://127.0.0.1:<port>/<bucket>/<key> was read as such"
    ),
    "table-update-in-place": (
        "moto cannot update a DynamoDB table through CloudFormation (it drops it from the stack): the "
        "table was kept in place, as CloudFormation updates it"
    ),
    "event-bus-ref-is-its-name": (
        "moto's AWS::Events::EventBus has no physical id, so Ref handed the object to a function's "
        "environment: Ref resolved to the bus name, as CloudFormation resolves it"
    ),
    "failed-execution-reported": (
        "moto raises a resource's error from ExecuteChangeSet: reported as CloudFormation does, a "
        "failed resource and a rolled-back stack (moto removes nothing it created)"
    ),
    "model:": "moto's CloudFormation lacks this type: created through moto's own service backend",
    "accepted-without-effect:": "moto has neither a CloudFormation type nor a backend we use: accepted, not created",
}

NOT_PROVEN = (
    "IAM and KMS policy evaluation by AWS (moto enforces none; `make test`'s IAM check simulates it)",
    "the Lambda concurrency quota and runtime/architecture of a real account (preflight reads moto's defaults)",
    "HTTP API, alarms, queue policy, async-invoke config: accepted without effect (see workarounds)",
    "functions running: nothing is invoked; the local stack and the e2e tests cover behaviour",
    "CloudFormation rollback and DeletionPolicy semantics (moto applies changes without rollback)",
)


@dataclass
class Rehearsal:
    """The moto endpoint, the environment every step gets, and what was observed."""

    endpoint: str
    env: dict[str, str]
    log: IO[str]
    failures: list[str] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)

    def client(self, service: str, region: str) -> Any:
        """A boto3 client on the moto endpoint."""
        return boto3.client(
            service,  # type: ignore[call-overload]
            region_name=region,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def fail(self, message: str) -> None:
        """Record a failed check (the run goes on to report everything)."""
        self.failures.append(message)
        print(f"   FAIL {message}", flush=True)

    def ok(self, message: str) -> None:
        """Report a passed check."""
        print(f"   ok   {message}", flush=True)


def isolated_env(endpoint: str, region: str, scratch: Path) -> dict[str, str]:
    """The environment of every step: moto's endpoint, fake credentials, no operator AWS config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("BITRIX24_CLIENT_ID", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }
    env.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            # Never the operator's profiles or credentials, whatever the machine has.
            "AWS_CONFIG_FILE": str(scratch / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "aws-credentials"),
            "SAM_CLI_TELEMETRY": "0",
            # SAM CLI keeps its metadata (installation id, cache) under the home directory.
            "SAM_CLI_CONTEXT_HOME": str(scratch),
        }
    )
    return env


def start_moto(workaround_log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The rehearsal's moto server on a free loopback port; its endpoint URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy_rehearsal.moto_server",
            "--workaround-log",
            str(workaround_log),
            "--host",
            LOOPBACK,
            "--port",
            "0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    line = process.stdout.readline().decode() if process.stdout else ""
    try:
        bound = json.loads(line)
        port = int(bound["port"])
    except (ValueError, KeyError) as exc:
        process.kill()
        raise RuntimeError(f"moto did not start: {line.strip() or 'no output'}") from exc
    return process, f"http://{LOOPBACK}:{port}"


def run_step(
    rehearsal: Rehearsal,
    title: str,
    argv: Sequence[str],
    *,
    extra_env: Mapping[str, str] | None = None,
    stdin_text: str | None = None,
) -> bool:
    """Run one Makefile target with the rehearsal's environment, streaming its output; True on exit 0."""
    print(f"\n==> {title}: {' '.join(argv)}", flush=True)
    env = {**rehearsal.env, **(extra_env or {})}
    started = time.monotonic()
    result = subprocess.run(
        list(argv), cwd=REPO_ROOT, env=env, check=False,
        input=stdin_text.encode() if stdin_text is not None else None,
        stdin=None if stdin_text is not None else subprocess.DEVNULL,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    rehearsal.timings.append((title, elapsed))
    print(f"==> {title}: exit {result.returncode} after {elapsed:.1f} s", flush=True)
    if result.returncode != 0:
        rehearsal.fail(f"{title} exited {result.returncode}")
    return result.returncode == 0


def template_expectations(template_path: Path) -> dict[str, list[str]]:
    """What the deployed stack must hold, read from template.yaml (functions, queues, outputs)."""
    template = load_template(template_path)
    resources: dict[str, Any] = template.get("Resources", {})
    by_type: dict[str, list[str]] = {}
    for logical_id, resource in resources.items():
        by_type.setdefault(str(resource.get("Type")), []).append(logical_id)
    parameters = template.get("Parameters", {})
    variables: dict[str, Any] = dict(
        template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    )
    for function_id in by_type.get("AWS::Serverless::Function", []):
        own = resources[function_id].get("Properties", {}).get("Environment", {}).get("Variables", {})
        variables.update(own or {})
    # Variables holding a resource reference (Ref to a resource, GetAtt, Sub): never empty once deployed.
    # A conditional one (Fn::If, e.g. PKCE_SECRET_ID is "" while PkceEnabled is false) may be empty.
    referenced = sorted(
        name
        for name, value in variables.items()
        if isinstance(value, dict)
        and not ("Ref" in value and value["Ref"] in parameters)
        and "Fn::If" not in value
    )
    return {
        "referenced_variables": referenced,
        "functions": sorted(by_type.get("AWS::Serverless::Function", [])),
        "queues": sorted(by_type.get("AWS::SQS::Queue", [])),
        "tables": sorted(by_type.get("AWS::DynamoDB::Table", [])),
        "outputs": sorted(template.get("Outputs", {})),
    }


def check_stack(
    rehearsal: Rehearsal, env_name: str, expected_status: set[str], executed_at_least: int = 1
) -> dict[str, str]:
    """Check the stack's status, executed change set, resources and outputs; its outputs."""
    stack_name, region = stack_and_region(env_name)
    region = region or rehearsal.env["AWS_DEFAULT_REGION"]
    cfn = rehearsal.client("cloudformation", region)
    expected = template_expectations(REPO_ROOT / "template.yaml")
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    status = stack["StackStatus"]
    (rehearsal.ok if status in expected_status else rehearsal.fail)(f"{stack_name} status {status}")

    change_sets = [
        cs
        for cs in cfn.list_change_sets(StackName=stack_name)["Summaries"]
        if cs.get("StackName") == stack_name
    ]
    executed = [cs for cs in change_sets if cs.get("ExecutionStatus") == "EXECUTE_COMPLETE"]
    if len(executed) >= executed_at_least:
        rehearsal.ok(f"{stack_name}: {len(executed)} change set(s) created and executed")
    else:
        statuses = [(cs.get("Status"), cs.get("ExecutionStatus")) for cs in change_sets]
        rehearsal.fail(
            f"{stack_name}: {len(executed)} executed change set(s), expected {executed_at_least} ({statuses})"
        )

    resources = cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources}
    lambda_client = rehearsal.client("lambda", region)
    for function in expected["functions"]:
        name = physical.get(function)
        try:
            config = lambda_client.get_function_configuration(FunctionName=name or function)
            variables = (config.get("Environment") or {}).get("Variables") or {}
            # A reference CloudFormation could not resolve would leave an empty or "None" value.
            unresolved = sorted(
                k
                for k, v in variables.items()
                if v in (None, "None", "") and k in expected["referenced_variables"]
            )
            if unresolved:
                rehearsal.fail(f"{function}: unresolved environment {', '.join(unresolved)}")
            else:
                rehearsal.ok(
                    f"{function}: {config['FunctionName']} ({config.get('Runtime')}, {len(variables)} variables)"
                )
        except Exception as exc:
            rehearsal.fail(f"{function}: not a Lambda function in moto ({type(exc).__name__})")
    sqs = rehearsal.client("sqs", region)
    for queue in expected["queues"]:
        url = physical.get(queue, "")
        try:
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            rehearsal.ok(f"{queue}: queue exists")
        except Exception as exc:
            rehearsal.fail(f"{queue}: queue missing ({type(exc).__name__})")
    dynamodb = rehearsal.client("dynamodb", region)
    for table in expected["tables"]:
        try:
            dynamodb.describe_table(TableName=physical.get(table, table))
            rehearsal.ok(f"{table}: table exists")
        except Exception as exc:
            rehearsal.fail(f"{table}: table missing ({type(exc).__name__})")

    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs") or []}
    missing = [key for key in expected["outputs"] if not outputs.get(key)]
    if missing:
        rehearsal.fail(f"{stack_name}: outputs missing or empty: {', '.join(missing)}")
    else:
        rehearsal.ok(f"{stack_name}: all {len(expected['outputs'])} outputs readable")
    return outputs


def secret_value(rehearsal: Rehearsal, env_name: str, outputs: Mapping[str, str]) -> str | None:
    """The ClientSecret's current value in moto (the rehearsal's fake secret), None if unreadable."""
    _, region = stack_and_region(env_name)
    secrets = rehearsal.client("secretsmanager", region or rehearsal.env["AWS_DEFAULT_REGION"])
    try:
        return str(secrets.get_secret_value(SecretId=outputs["ClientSecretArn"])["SecretString"])
    except Exception:
        return None


def schedules(rehearsal: Rehearsal, region: str) -> list[str]:
    """Every schedule in moto's Scheduler as group/name."""
    scheduler = rehearsal.client("scheduler", region)
    names = []
    for group in scheduler.list_schedule_groups()["ScheduleGroups"]:
        for schedule in scheduler.list_schedules(GroupName=group["Name"])["Schedules"]:
            names.append(f"{group['Name']}/{schedule['Name']}")
    return sorted(names)


def report_workarounds(workaround_log: Path) -> list[str]:
    """Print the workarounds moto needed, with counts; their names."""
    counts: Counter[str] = Counter()
    if workaround_log.exists():
        for line in workaround_log.read_text(encoding="utf-8").splitlines():
            counts[json.loads(line)["workaround"]] += 1
    print("\n==> moto workarounds applied (rehearsal only; `make deploy` against AWS uses none):")
    for name, count in sorted(counts.items()):
        text = next((t for key, t in WORKAROUND_TEXT.items() if name == key or name.startswith(key)), "")
        print(f"   - {name} x{count}: {text}")
    return sorted(counts)


def rehearse(rehearsal: Rehearsal, make: Sequence[str]) -> None:
    """The steps; failures are recorded on `rehearsal`, the first failing deploy ends the run."""
    first = {"BITRIX24_CLIENT_ID": REHEARSAL_CLIENT_ID}
    region = rehearsal.env["AWS_DEFAULT_REGION"]

    if not run_step(rehearsal, "[1/9] preflight dev (no stack yet)", [*make, "preflight", "ENV=dev"]):
        return
    if not run_step(rehearsal, "[2/9] first deploy dev", [*make, "deploy", "ENV=dev"], extra_env=first):
        return
    print("\n==> [3/9] check the dev stack")
    outputs = check_stack(rehearsal, "dev", {"CREATE_COMPLETE"})
    placeholder = secret_value(rehearsal, "dev", outputs)

    run_step(
        rehearsal,
        "[4/9] preflight dev (client secret not put yet: a warning)",
        [*make, "preflight", "ENV=dev"],
    )
    if not run_step(
        rehearsal, "[5/9] put-secret dev", [*make, "put-secret", "ENV=dev"], stdin_text=REHEARSAL_SECRET
    ):
        return
    if not run_step(
        rehearsal, "[6/9] second deploy dev (client id from the stack)", [*make, "deploy", "ENV=dev"]
    ):
        return
    print("\n==> [7/9] check the dev stack after the update")
    outputs = check_stack(rehearsal, "dev", {"CREATE_COMPLETE", "UPDATE_COMPLETE"}, executed_at_least=2)
    kept = secret_value(rehearsal, "dev", outputs)
    if kept == REHEARSAL_SECRET:
        rehearsal.ok("the put client secret survived the second deploy")
    else:
        rehearsal.fail("the client secret changed during the second deploy")
    if placeholder == REHEARSAL_SECRET:
        rehearsal.fail("the stack's initial client secret equals the put one (put-secret proved nothing)")

    if not run_step(rehearsal, "[8/9] preflight prod", [*make, "preflight", "ENV=prod"]):
        return
    # prod's samconfig profile confirms the change set; answer as the operator would.
    if not run_step(rehearsal, "[9/9] first deploy prod (same account and region)", [*make, "deploy", "ENV=prod"],
                    extra_env=first, stdin_text="y\n"):  # fmt: skip
        return
    print("\n==> check the prod stack next to dev")
    check_stack(rehearsal, "prod", {"CREATE_COMPLETE"})
    names = schedules(rehearsal, region)
    expected_count = 2 * len(schedule_events(REPO_ROOT / "template.yaml"))
    if len(names) == expected_count and len(set(names)) == len(names):
        rehearsal.ok(f"schedules of both stacks coexist: {', '.join(names)}")
    else:
        rehearsal.fail(f"expected {expected_count} distinct schedules, found {names}")


def schedule_events(template_path: Path) -> list[str]:
    """Function events of type ScheduleV2 in the template (each becomes one schedule)."""
    template = load_template(template_path)
    found = []
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        for event_id, event in (resource.get("Properties", {}).get("Events") or {}).items():
            if event.get("Type") == "ScheduleV2":
                found.append(f"{logical_id}.{event_id}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rehearsal; 0 only if every step and check held."""
    parser = argparse.ArgumentParser(prog="python -m deploy_rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("--make", default=os.environ.get("MAKE", "make"), help="make program (default: make)")
    args = parser.parse_args(argv)
    _, region = stack_and_region("dev")
    region = region or "eu-central-1"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="deploy-rehearsal-") as scratch_dir:
        scratch = Path(scratch_dir)
        workaround_log = scratch / "workarounds.jsonl"
        moto, endpoint = start_moto(workaround_log)
        print(f"==> moto server (with the rehearsal's workarounds) at {endpoint}", flush=True)
        rehearsal = Rehearsal(endpoint=endpoint, env=isolated_env(endpoint, region, scratch), log=sys.stdout)
        try:
            rehearse(rehearsal, [args.make, "--no-print-directory"])
        finally:
            report_workarounds(workaround_log)
            if moto.stdin:
                moto.stdin.close()
            moto.wait(timeout=30)
    print(
        "\n==> step times: "
        + ", ".join(f"{title.split(']')[0]}] {secs:.0f} s" for title, secs in rehearsal.timings)
    )
    print("==> not proven by the rehearsal (only a real account can):")
    for item in NOT_PROVEN:
        print(f"   - {item}")
    total = time.monotonic() - started
    if rehearsal.failures:
        print(
            f"\ndeploy-rehearsal: FAILED ({len(rehearsal.failures)} problem(s)) in {total:.0f} s", flush=True
        )
        for failure in rehearsal.failures:
            print(f"   - {failure}")
        return 1
    print(f"\ndeploy-rehearsal: passed in {total:.0f} s", flush=True)
    return 0
