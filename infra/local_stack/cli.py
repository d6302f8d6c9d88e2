"""``python -m local_stack serve|demo``: command-line flags and environment variables over StackConfig."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from local_stack.config import DEFAULT_PORTS, DEFAULT_STATE_FILE, REPO_ROOT, PortInUseError, StackConfig
from local_stack.stack import LocalStack
from local_stack.template import TemplateError

ENV_PREFIX = "LOCAL_STACK_"


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"error: {ENV_PREFIX}{name} must be an integer, got {raw!r}") from None


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {what} must look like KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; defaults come from LOCAL_STACK_* variables, then the built-in block."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m local_stack", description="The no-Docker local stack.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the stack until Ctrl-C or SIGTERM")
    ports = serve.add_argument_group("ports (0 = any free port; env LOCAL_STACK_<NAME>_PORT)")
    for name, default in DEFAULT_PORTS.items():
        ports.add_argument(
            f"--{name}-port",
            type=int,
            default=_env_int(env, f"{name.upper()}_PORT", default),
            metavar="N",
            help=f"{name} port (default {default})",
        )
    serve.add_argument(
        "--template",
        type=Path,
        default=Path(env.get(ENV_PREFIX + "TEMPLATE", str(REPO_ROOT / "template.yaml"))),
    )
    serve.add_argument(
        "--leads", type=int, default=_env_int(env, "LEADS", 10_000), help="leads seeded in the portal"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=_env_int(env, "WORKERS", 4),
        help="warm workers per function at most (concurrent invocations)",
    )
    serve.add_argument(
        "--poll-interval",
        type=float,
        default=float(env.get(ENV_PREFIX + "POLL_INTERVAL", "1.0")),
        help="seconds between background SQS polls",
    )
    serve.add_argument("--no-poll", action="store_true", help="no background SQS polling (use /_local/drain)")
    serve.add_argument("--prewarm", action="store_true", help="start one worker per function at start-up")
    serve.add_argument(
        "--region", default=env.get(ENV_PREFIX + "REGION", env.get("AWS_DEFAULT_REGION", "eu-central-1"))
    )
    serve.add_argument("--stack-name", default=env.get(ENV_PREFIX + "STACK_NAME", "b24connector-local"))
    serve.add_argument(
        "--state-file", type=Path, default=Path(env.get(ENV_PREFIX + "STATE_FILE", str(DEFAULT_STATE_FILE)))
    )
    serve.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="function env override"
    )
    serve.add_argument(
        "--parameter", action="append", default=[], metavar="KEY=VALUE", help="template parameter override"
    )
    serve.add_argument(
        "--emulator-setting",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help='EmulatorConfig field, e.g. rate_plan="off" or latency_seconds=0.05',
    )
    serve.add_argument("--quiet", action="store_true", help="no access log lines")
    demo = commands.add_parser("demo", help="run the whole journey against a fresh stack")
    demo.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def config_from_args(args: argparse.Namespace) -> StackConfig:
    """StackConfig for `serve`."""
    emulator_settings: dict[str, Any] = {}
    for key, raw in _pairs(args.emulator_setting, "--emulator-setting").items():
        try:
            emulator_settings[key] = json.loads(raw)
        except ValueError:
            emulator_settings[key] = raw
    return StackConfig(
        template=args.template,
        api_port=args.api_port,
        lambda_port=args.lambda_port,
        aws_port=args.aws_port,
        portal_port=args.portal_port,
        oauth_port=args.oauth_port,
        region=args.region,
        stack_name=args.stack_name,
        leads=args.leads,
        workers_per_function=args.workers,
        poll_queues=not args.no_poll,
        poll_interval_seconds=args.poll_interval,
        prewarm=args.prewarm,
        emulator_settings=emulator_settings,
        env_overrides=_pairs(args.env, "--env"),
        parameter_overrides=_pairs(args.parameter, "--parameter"),
        state_file=args.state_file.resolve(),
        access_log=not args.quiet,
    )


def summary(stack: LocalStack) -> str:
    """The human-readable where-is-what printed by `serve`."""
    info = stack.running_info()
    lines = [f"Local stack is up in {info.startup_seconds:.2f} s (template {info.template})"]
    rows = [
        ("API (HttpApi v2)", info.api_url, ", ".join(info.routes)),
        ("Lambda Invoke API", info.lambda_endpoint_url, ", ".join(info.functions)),
        ("AWS (moto)", info.aws_endpoint_url, f"region {info.aws_region}"),
    ]
    if info.bitrix24_portal_url:
        rows += [
            (
                "Bitrix24 portal",
                info.bitrix24_portal_url,
                f"domain {info.portal_domain}, member_id {info.member_id}",
            ),
            ("Bitrix24 OAuth server", info.oauth_server_url or "", f"client_id {info.client_id}"),
            ("Emulator admin", info.emulator_admin_url or "", "GET /stats, POST /reset"),
        ]
    for label, url, detail in rows:
        lines.append(f"  {label:<22} {url:<28} {detail}")
    lines.append(f"  Refresh sweep now:     curl -X POST {info.local_admin_url}/schedule/RefreshFunction")
    lines.append(f"  Drain the queues:      curl -X POST {info.local_admin_url}/drain")
    if stack.config.state_file is not None:
        lines.append(f"  State file:            {stack.config.state_file}")
    lines.append("Ctrl-C (or SIGTERM) stops everything.")
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    """Run until a signal; 1 when the stack cannot start."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stack = LocalStack(config_from_args(args))
    try:
        stack.start()
    except (PortInUseError, TemplateError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(summary(stack), flush=True)
        stop.wait()
        print("stopping the local stack ...", flush=True)
    finally:
        stack.stop()
    print("stopped.", flush=True)
    return 0


def demo(args: argparse.Namespace) -> int:
    """Hand over to local_stack.demo (the journey), which owns its own flags."""
    try:
        module = importlib.import_module("local_stack.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "local_stack.demo":
            raise
        print("error: the demo journey (local_stack/demo.py) is not in this checkout yet", file=sys.stderr)
        return 2
    return int(module.main(list(args.args)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m local_stack`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        # The journey owns its flags: pass them through without a `--` separator.
        return demo(argparse.Namespace(args=[a for a in argv[1:] if a != "--"]))
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return demo(args)
