"""One lead export in a fresh interpreter: `python -m tests.bench.export_client '<job json>'`.

Clients: `leads_function` (our fetch_leads over the Lambda Invoke API of the local stack, one
invocation at a time), `leads_function_parallel` (fetch_leads(parallel=K): K signed ID-range parts read
on K concurrent invocations),
`ours_parallel` / `ours_sequential` (our FastLister in this process), `fast_bitrix24` (get_all),
`b24pysdk` (as_list_fast). Every client materialises all rows, as an export does. The clock runs from
just before the first request to the last row (imports and client construction excluded); peak
memory is this process's VmHWM (/proc/self/status). Not ru_maxrss: Linux carries the parent's
high-water mark across fork+exec into it, so every child would report the bench process's size.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import resource
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

from tests.bench.common import peak_rss_kb

Rows = list[dict[str, Any]]


def _leads_function(job: dict[str, Any]) -> Callable[[], Rows]:
    import boto3
    from botocore.config import Config

    from b24connector_client import fetch_leads

    client = boto3.client(
        "lambda",
        endpoint_url=job["lambda_endpoint_url"],
        region_name=job["region"],
        config=Config(read_timeout=300, retries={"max_attempts": 1}),
    )

    def run() -> Rows:
        return list(
            fetch_leads(
                member_id=job["member_id"],
                select=job["select"],
                limit=job["page_limit"],
                lambda_client=client,
                parallel=1,  # one invocation at a time (the default now lets the first answer pick parts)
            )
        )

    return run


def _leads_function_parallel(job: dict[str, Any]) -> Callable[[], Rows]:
    """`fetch_leads(parallel=K)`: the first invocation cuts the ID range into K signed parts, read at once."""
    import boto3
    from botocore.config import Config

    from b24connector_client import fetch_leads

    parallel = int(job["parallel"])
    client = boto3.client(
        "lambda",
        endpoint_url=job["lambda_endpoint_url"],
        region_name=job["region"],
        config=Config(read_timeout=300, retries={"max_attempts": 1}, max_pool_connections=parallel + 1),
    )

    def run() -> Rows:
        return list(
            fetch_leads(
                member_id=job["member_id"],
                select=job["select"],
                limit=job["page_limit"],
                lambda_client=client,
                parallel=parallel,
            )
        )

    return run


class CountingLambda:
    """A boto3 Lambda client that counts invocations and the split parts the answers offered."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.invocations = 0
        self.parts = 0
        self.max_invoke_seconds = 0.0
        self.total_invoke_seconds = 0.0
        self.max_answer_bytes = 0

    def invoke(self, **kwargs: Any) -> Any:
        """Invoke, then peek at the answer (put back for the caller to read)."""
        began = time.perf_counter()
        response = self._client.invoke(**kwargs)
        raw = response["Payload"].read()
        took = time.perf_counter() - began
        parts = 0
        if b'"split_cursors"' in raw:
            parts = len(json.loads(raw).get("split_cursors") or [])
        response["Payload"] = io.BytesIO(raw)
        with self._lock:
            self.invocations += 1
            self.parts = max(self.parts, parts)
            self.max_invoke_seconds = max(self.max_invoke_seconds, took)
            self.total_invoke_seconds += took
            self.max_answer_bytes = max(self.max_answer_bytes, len(raw))
        return response


# What the `leads_function_auto` client saw (printed with the result).
SEEN: dict[str, Any] = {}


def _leads_function_auto(job: dict[str, Any]) -> Callable[[], Rows]:
    """`fetch_leads()` without `parallel`: the first answer decides how many parts are read at once."""
    import boto3
    from botocore.config import Config

    from b24connector_client import MAX_PARALLEL, fetch_leads

    client = CountingLambda(
        boto3.client(
            "lambda",
            endpoint_url=job["lambda_endpoint_url"],
            region_name=job["region"],
            config=Config(
                read_timeout=900, retries={"max_attempts": 1}, max_pool_connections=MAX_PARALLEL + 1
            ),
        )
    )

    def run() -> Rows:
        try:
            if job.get("stream"):
                return _stream(
                    fetch_leads(
                        member_id=job["member_id"],
                        select=job["select"],
                        limit=job["page_limit"],
                        lambda_client=client,  # type: ignore[arg-type]
                    )
                )
            return list(
                fetch_leads(
                    member_id=job["member_id"],
                    select=job["select"],
                    limit=job["page_limit"],
                    lambda_client=client,  # type: ignore[arg-type]
                )
            )
        finally:
            SEEN.update(
                invocations=client.invocations,
                parts=client.parts,
                max_invoke_seconds=client.max_invoke_seconds,
                total_invoke_seconds=client.total_invoke_seconds,
                max_answer_bytes=client.max_answer_bytes,
            )

    return run


def _stream(rows: Any) -> Rows:
    """Consume a lead iterator as a streaming caller does, sampling memory as it goes.

    Nothing is kept but a bitmap of the IDs seen (to check completeness without growing with N), so
    the samples show what the client itself holds while it streams.
    """
    tracemalloc.start()
    samples: list[tuple[int, int, int]] = []  # (rows so far, traced bytes now, RSS KiB now)
    seen = bytearray(1 << 16)
    count = unique = 0
    for count, row in enumerate(rows, 1):
        lead_id = int(row["ID"])
        if lead_id >> 3 >= len(seen):
            seen.extend(bytes(max(len(seen), (lead_id >> 3) + 1 - len(seen))))
        bit = 1 << (lead_id & 7)
        if not seen[lead_id >> 3] & bit:
            seen[lead_id >> 3] |= bit
            unique += 1
        if count % 10_000 == 0:
            samples.append((count, tracemalloc.get_traced_memory()[0], _rss_kb()))
    SEEN.update(
        memory_samples=samples,
        traced_peak_bytes=tracemalloc.get_traced_memory()[1],
        rows=count,
        unique_ids=unique,
    )
    tracemalloc.stop()
    return []


def _rss_kb() -> int:
    for line in open(f"/proc/{os.getpid()}/status", encoding="ascii"):  # noqa: SIM115 - tiny read
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _ours(job: dict[str, Any], parallel: bool) -> Callable[[], Rows]:
    from b24connector.bitrix24.list_query import ListQuery
    from b24connector.bitrix24.listing import FastLister
    from b24connector.bitrix24.pacing import LocalTokenBucket
    from b24connector.bitrix24.portal_context import PortalContext
    from b24connector.bitrix24.rest import RestClient
    from b24connector.portals import PortalPolicy

    policy = PortalPolicy((), (job["domain"],), local_mode=True)
    pacer: Any = LocalTokenBucket(job["rate"], job["burst"])
    pacing_key = None
    if job.get("pacing_table"):
        # Paced as LeadsFunction is: through the shared DynamoDB bucket, under the same portal key, so
        # a comparison with LeadsFunction measures LeadsFunction, not the pacer.
        from b24connector.shared_pacing import DynamoTokenBucket

        pacer = DynamoTokenBucket(
            job["pacing_table"], job["rate"], job["burst"], lease_size=int(job.get("pacing_lease", 1))
        )
        pacing_key = job["member_id"]
    lister = FastLister(RestClient(policy, pacer=pacer))
    portal = PortalContext(job["client_endpoint"], job["token"], domain=job["domain"], pacing_key=pacing_key)

    def run() -> Rows:
        if parallel:
            rows = lister.iter_list_parallel(
                portal, ListQuery("crm.lead.list", select=job["select"]), workers=job["workers"]
            )
        else:
            rows = lister.iter_list(portal, ListQuery("crm.lead.list", select=job["select"]))
        return list(rows)

    return run


def _fast_bitrix24(job: dict[str, Any]) -> Callable[[], Rows]:
    from fast_bitrix24 import Bitrix

    token = job["token"]

    async def token_func() -> str:
        return str(token)

    bitrix = Bitrix(job["client_endpoint"], token_func=token_func, verbose=False, ssl=False)

    def run() -> Rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its sync wrapper still calls asyncio.get_event_loop()
            rows = bitrix.get_all("crm.lead.list", {"select": job["select"]})
        return list(rows)

    asyncio.set_event_loop(asyncio.new_event_loop())
    return run


def _b24pysdk(job: dict[str, Any]) -> Callable[[], Rows]:
    from b24pysdk import BitrixApp, BitrixToken, Client

    # b24pysdk always builds https://{domain}/rest; the emulator speaks plain http on loopback.
    caller = importlib.import_module("b24pysdk.api.callers.call_method")
    caller._MethodCaller._base_url = property(lambda self: f"http://{self._domain}/rest")
    app = BitrixApp(client_id=job["client_id"], client_secret="unused")  # OAuth mode needs an app
    client = Client(BitrixToken(domain=job["domain"], auth_token=job["token"], bitrix_app=app))

    def run() -> Rows:
        return list(client.crm.lead.list(select=job["select"]).as_list_fast().result)

    return run


def main() -> int:
    """Run one export and print what happened."""
    job = json.loads(sys.argv[1])
    kind = job["client"]
    builders: dict[str, Callable[[], Callable[[], Rows]]] = {
        "leads_function": lambda: _leads_function(job),
        "leads_function_parallel": lambda: _leads_function_parallel(job),
        "leads_function_auto": lambda: _leads_function_auto(job),
        "ours_parallel": lambda: _ours(job, parallel=True),
        "ours_sequential": lambda: _ours(job, parallel=False),
        "fast_bitrix24": lambda: _fast_bitrix24(job),
        "b24pysdk": lambda: _b24pysdk(job),
    }
    run = builders[kind]()
    error = None
    rows: Rows = []
    started = time.perf_counter()
    cpu_started = time.process_time()
    try:
        rows = run()
    except Exception as exc:  # a peer giving up is a result, not a bench failure
        error = f"{type(exc).__name__}: {str(exc)[:160]}"
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    ids = [int(row["ID"]) for row in rows]  # empty for a streamed export (it reports its own counts)
    print(
        json.dumps(
            {
                "client": kind,
                "rows": len(rows),
                "unique_ids": len(set(ids)),
                "wall_seconds": wall,
                "cpu_seconds": cpu,  # this process only (all its threads)
                "error": error,
                "maxrss_kb": peak_rss_kb(os.getpid()) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                **SEEN,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
