"""Store the Bitrix24 client secret in the stack's ClientSecret without echoing or logging it.

python -m operator_tools.put_secret --env dev            # prompts (no echo)
printf %s "$SECRET" | python -m operator_tools.put_secret --env prod
python -m operator_tools.put_secret --secret-id arn:aws:secretsmanager:... --region eu-central-1
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from operator_tools.samconfig import DEFAULT_SAMCONFIG, SamConfigError, stack_and_region

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

SECRET_OUTPUT = "ClientSecretArn"
PROMPT = "Bitrix24 client secret (input hidden): "


class PutSecretError(RuntimeError):
    """The secret could not be located, read or stored; the message never holds the value."""


def secret_arn_from_stack(cloudformation: CloudFormationClient, stack_name: str) -> str:
    """The ClientSecretArn output of a deployed stack."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise PutSecretError(f"cannot describe stack {stack_name}: {exc.response['Error']['Code']}") from None
    for output in stacks[0].get("Outputs", []) if stacks else []:
        if output.get("OutputKey") == SECRET_OUTPUT and output.get("OutputValue"):
            return output["OutputValue"]
    raise PutSecretError(f"stack {stack_name} has no {SECRET_OUTPUT} output; deploy it first")


def read_secret(stdin: TextIO, prompt: Callable[[str], str] = getpass.getpass) -> str:
    """The secret from a hidden prompt on a terminal, else the whole of stdin; surrounding blanks dropped."""
    value = prompt(PROMPT) if stdin.isatty() else stdin.read()
    value = value.strip()
    if not value:
        raise PutSecretError("the client secret is empty; nothing was stored")
    return value


def put_secret(secrets: SecretsManagerClient, secret_id: str, value: str) -> str:
    """Store `value` as the secret's new current version; returns the version id."""
    try:
        answer = secrets.put_secret_value(SecretId=secret_id, SecretString=value)
    except ClientError as exc:
        # Only the error code: botocore's message never carries the value, but keep it that way.
        raise PutSecretError(f"cannot store the secret: {exc.response['Error']['Code']}") from None
    return answer["VersionId"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m operator_tools.put_secret",
        description="Store the Bitrix24 client secret in the stack's ClientSecret (prompts; never echoes).",
    )
    parser.add_argument("--env", default="dev", help="samconfig.toml environment whose stack to use (dev)")
    parser.add_argument("--secret-id", help="secret ARN or name; skips the stack lookup")
    parser.add_argument("--stack-name", help="stack to read ClientSecretArn from (default: samconfig's)")
    parser.add_argument("--region", help="AWS region (default: samconfig's, then the AWS default)")
    parser.add_argument("--samconfig", type=Path, default=DEFAULT_SAMCONFIG, help=argparse.SUPPRESS)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
    session_factory: Callable[..., Any] = boto3.session.Session,
) -> int:
    """Command-line entry: locate the secret, read the value, store it; 0 on success."""
    args = _parser().parse_args(argv)
    try:
        region = args.region
        stack_name = args.stack_name
        if not args.secret_id and not stack_name:
            stack_name, config_region = stack_and_region(args.env, args.samconfig)
            region = region or config_region
        elif not region:
            try:
                region = stack_and_region(args.env, args.samconfig)[1]
            except SamConfigError:
                region = None
        session = session_factory(region_name=region) if region else session_factory()
        secret_id = args.secret_id or secret_arn_from_stack(session.client("cloudformation"), stack_name)
        value = read_secret(stdin if stdin is not None else sys.stdin, prompt)
        version = put_secret(session.client("secretsmanager"), secret_id, value)
    except (PutSecretError, SamConfigError) as exc:
        print(f"put-secret: {exc}", file=sys.stderr)
        return 1
    except BotoCoreError as exc:
        print(f"put-secret: AWS is not reachable or not configured ({type(exc).__name__})", file=sys.stderr)
        return 1
    print(f"Stored a new current version ({version}) of {secret_id}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
