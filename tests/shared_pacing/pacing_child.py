"""One paced client process (like one Lambda instance): `python -m tests.shared_pacing.pacing_child`.

Reads a JSON job from argv[1], builds a RestClient whose pacer is the shared DynamoTokenBucket or a
process-local bucket, prints "ready", waits for a line on stdin (so every process starts together),
calls `app.info` `calls` times with 503 retries off, and prints one JSON line with what happened.
"""

from __future__ import annotations

import json
import sys
import time

from b24connector.bitrix24.errors import Bitrix24Error
from b24connector.bitrix24.pacing import LocalTokenBucket, Pacer
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.rest import RestClient
from b24connector.portals import PortalPolicy
from b24connector.shared_pacing import DynamoTokenBucket, pacing_client


def main() -> int:
    """Run one job."""
    job = json.loads(sys.argv[1])
    rate, burst = float(job["rate"]), int(job["burst"])
    pacer: Pacer
    if job["mode"] == "shared":
        shared = DynamoTokenBucket(
            job["table"],
            rate,
            burst,
            lease_size=job.get("lease_size", 5),
            lease_seconds=job["lease_seconds"],
            client=pacing_client(),  # built before the start line, as a warm container would have it
        )
        pacer = shared
    else:
        shared = None
        pacer = LocalTokenBucket(rate, burst)
    client = RestClient(
        PortalPolicy((), (job["domain"],), local_mode=True), pacer=pacer, max_query_limit_retries=0
    )
    portal = PortalContext(job["client_endpoint"], job["token"], domain=job["domain"], pacing_key=job["key"])
    print("ready", flush=True)
    sys.stdin.readline()
    ok, errors, sent = 0, [], []
    for _ in range(int(job["calls"])):
        sent.append(time.time())
        try:
            client.call(portal, "app.info")
            ok += 1
        except Bitrix24Error as exc:
            errors.append(exc.code)
    writes = shared.writes if shared is not None else 0
    print(json.dumps({"ok": ok, "errors": errors, "sent": sent, "writes": writes}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
