"""Command line: `python -m bitrix24_emulator --portal-port 0 --oauth-port 0 --leads 10000 --redirect-uri URL`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.emulator import Emulator


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    parser = argparse.ArgumentParser(prog="python -m bitrix24_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--portal-port", type=int, default=0, help="portal port, 0 = ephemeral")
    parser.add_argument("--oauth-port", type=int, default=0, help="OAuth server port, 0 = ephemeral")
    parser.add_argument("--leads", type=int, default=10_000, help="synthetic leads to seed")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic data")
    parser.add_argument("--redirect-uri", default="", help="the app's configured redirect_uri")
    parser.add_argument("--client-id", help="the app's client_id (default: random local.x.y)")
    parser.add_argument("--client-secret", help="the app's client secret (default: random)")
    parser.add_argument("--member-id", help="the portal's member_id (default: random)")
    parser.add_argument("--scope", default="crm,user")
    parser.add_argument("--latency", type=float, default=0.0, help="real seconds added to every REST answer")
    parser.add_argument(
        "--time-scale", type=float, default=0.0, help="real delay per modeled second (0 = off)"
    )
    parser.add_argument("--rate-plan", choices=("standard", "enterprise", "off"), default="standard")
    parser.add_argument(
        "--operating-limit", type=float, default=420.0, help="seconds per method per 10 min; 0 = off"
    )
    parser.add_argument("--app-mode", choices=("ui", "api_only"), default="ui", help="the app's kind")
    parser.add_argument("--market-app", action="store_true", help="a Market app (gets ONAPPUSERREADY)")
    parser.add_argument("--install-url", default="", help="the install URL of the app card")
    parser.add_argument("--json", action="store_true", help="print one JSON line with the addresses")
    parser.add_argument(
        "--show-secret", action="store_true", help="include client_secret in the printed facts"
    )
    parser.add_argument(
        "--state-file", type=Path, help="write the facts, secret included, to this file (0600)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Turn parsed arguments into a config."""
    overrides: dict[str, Any] = {
        "host": args.host,
        "portal_port": args.portal_port,
        "oauth_port": args.oauth_port,
        "leads": args.leads,
        "seed": args.seed,
        "redirect_uri": args.redirect_uri,
        "scope": args.scope,
        "latency_seconds": args.latency,
        "time_scale": args.time_scale,
        "rate_plan": args.rate_plan,
        "operating_limit_seconds": args.operating_limit,
        "app_mode": args.app_mode,
        "market_app": args.market_app,
        "install_url": args.install_url,
    }
    for name in ("client_id", "client_secret", "member_id"):
        value = getattr(args, name)
        if value:
            overrides[name] = value
    return EmulatorConfig(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emulator = Emulator(config).start()
    facts = emulator.describe()
    secret_facts = {**facts, "client_secret": emulator.client_secret}
    if args.state_file:
        descriptor = os.open(args.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(secret_facts, handle, indent=2)
    shown = secret_facts if args.show_secret else facts
    if args.json:
        print(json.dumps(shown), flush=True)
    else:
        print("Bitrix24 emulator running (Ctrl-C stops it)")
        for key in ("portal_url", "portal_domain", "oauth_url", "admin_url", "member_id", "client_id"):
            print(f"  {key:<14} {shown[key]}")
        if args.show_secret:
            print(f"  {'client_secret':<14} {shown['client_secret']}")
        print(f"  {'leads':<14} {facts['leads']['count']}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
