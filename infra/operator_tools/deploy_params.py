"""Write the parameter overrides `sam deploy` gets: samconfig.toml's for the environment + the client id.

SAM replaces (does not merge) samconfig's parameter_overrides when --parameter-overrides is given, so
`make deploy` passes this file instead. The Bitrix24 client id differs per app and is not committed:
it comes from --client-id or BITRIX24_CLIENT_ID, else from the deployed stack's current value.

    python -m operator_tools.deploy_params --env dev --output .aws-sam/deploy-parameters-dev.yaml

The file is YAML because SAM CLI reads `file://` overrides only as .yaml/.yml/.toml (its JSON reader is
disabled: samcli/lib/config/file_manager.py FILE_MANAGER_MAPPER). Every key and value is written as a
double-quoted scalar (JSON string syntax, which YAML accepts), so YAML never retypes a value
(`true`, `021`, `1e3` stay the strings the template receives).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from operator_tools.samconfig import DEFAULT_SAMCONFIG, SamConfigError, parameter_overrides, stack_and_region

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient

CLIENT_ID_PARAMETER = "Bitrix24ClientId"
CLIENT_ID_ENV = "BITRIX24_CLIENT_ID"


class DeployParametersError(RuntimeError):
    """The overrides cannot be completed (typically: no client id anywhere)."""


def deployed_parameter(cloudformation: CloudFormationClient, stack_name: str, name: str) -> str | None:
    """A parameter's current value on a deployed stack; None when the stack or parameter is absent."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ValidationError":  # CloudFormation's "does not exist"
            return None
        raise
    for parameter in stacks[0].get("Parameters", []) if stacks else []:
        if parameter.get("ParameterKey") == name:
            return parameter.get("ParameterValue") or None
    return None


def build_overrides(
    env: str,
    *,
    client_id: str | None,
    lookup_deployed: Callable[[str, str], str | None],
    samconfig: Path = DEFAULT_SAMCONFIG,
) -> dict[str, str]:
    """samconfig's overrides for `env` plus Bitrix24ClientId (argument, else the deployed stack's)."""
    overrides = parameter_overrides(env, samconfig)
    stack_name, _ = stack_and_region(env, samconfig)
    chosen = (client_id or "").strip() or overrides.get(CLIENT_ID_PARAMETER)
    if not chosen:
        chosen = lookup_deployed(stack_name, CLIENT_ID_PARAMETER)
    if not chosen:
        raise DeployParametersError(
            f"no Bitrix24 client id for {stack_name}: set {CLIENT_ID_ENV}=<client_id from the app card> "
            "for the first deploy"
        )
    overrides[CLIENT_ID_PARAMETER] = chosen
    return overrides


SAM_OVERRIDE_FILE_SUFFIXES = (".yaml", ".yml")


def render_overrides(overrides: Mapping[str, str]) -> str:
    """The overrides as a YAML mapping of double-quoted strings (what `file://x.yaml` reads)."""
    lines = [
        f"{json.dumps(str(name))}: {json.dumps(str(value))}" for name, value in sorted(overrides.items())
    ]
    return (
        "# Written by operator_tools.deploy_params for sam deploy --parameter-overrides.\n"
        + "\n".join(lines)
        + "\n"
    )


def write_overrides(overrides: Mapping[str, str], output: Path) -> None:
    """Write the overrides file `--parameter-overrides file://...` reads (.yaml/.yml only)."""
    if output.suffix not in SAM_OVERRIDE_FILE_SUFFIXES:
        raise DeployParametersError(
            f"{output}: SAM CLI reads parameter files only as {'/'.join(SAM_OVERRIDE_FILE_SUFFIXES)}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_overrides(overrides), encoding="utf-8")


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    session_factory: Callable[..., Any] = boto3.session.Session,
) -> int:
    """Command-line entry: write the overrides file; 0 on success."""
    parser = argparse.ArgumentParser(
        prog="python -m operator_tools.deploy_params",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--env", default="dev", help="samconfig.toml environment (dev)")
    parser.add_argument("--output", type=Path, required=True, help="YAML file to write (.yaml)")
    parser.add_argument(
        "--client-id", help=f"Bitrix24 client id (default: ${CLIENT_ID_ENV}, then the stack's)"
    )
    parser.add_argument("--samconfig", type=Path, default=DEFAULT_SAMCONFIG, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ

    def lookup(stack_name: str, name: str) -> str | None:
        region = stack_and_region(args.env, args.samconfig)[1]
        session = session_factory(region_name=region) if region else session_factory()
        return deployed_parameter(session.client("cloudformation"), stack_name, name)

    try:
        overrides = build_overrides(
            args.env,
            client_id=args.client_id or env.get(CLIENT_ID_ENV),
            lookup_deployed=lookup,
            samconfig=args.samconfig,
        )
        write_overrides(overrides, args.output)
    except (DeployParametersError, SamConfigError) as exc:
        print(f"deploy-params: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as exc:
        print(f"deploy-params: cannot read the deployed stack ({type(exc).__name__})", file=sys.stderr)
        return 1
    given = (args.client_id or env.get(CLIENT_ID_ENV) or "").strip()
    source = "given" if given else "the deployed stack's"
    print(f"Wrote {len(overrides)} parameter overrides to {args.output} (client id: {source}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
