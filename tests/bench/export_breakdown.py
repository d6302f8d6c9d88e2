"""Where the wall time of `fetch_leads(parallel=K)` goes: `python -m tests.bench.export_breakdown [K] [runs]`.

Starts the export section's stack (100,000 leads, 50 ms latency, time scale 0.01, 2 req/s burst 50),
warms K LeadsFunction workers, then exports `runs` times from this process and prints per run: the
wall time, each invocation's span and answer size, the CPU seconds of every process involved
(LeadsFunction workers, the moto server, this process = emulator + Lambda front + client) and the
part of this process's CPU spent inside the emulator's request engine (it holds the emulator's lock,
so that part is serialized for every client), plus the tokens the shared pacing bucket handed out.
Not part of `make bench`; the numbers back the export notes in docs/performance.md.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench.common import FAKE_AWS, SELECT, cpu_seconds
from tests.bench.stack import EXPORT_EMULATOR, BenchStack, bench_stack

N = 100_000


def _moto_pids() -> list[int]:
    mine = str(os.getpid())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            is_moto = b"moto_process" in (entry / "cmdline").read_bytes()
            if is_moto and (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == mine:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _one(bench: BenchStack, client: Any, parallel: int, engine_cpu: list[float]) -> None:
    from b24connector_client import fetch_leads

    bench.reset_portal()
    runtime = bench.stack.runtimes["LeadsFunction"]
    with runtime._cond:  # read-only look at the pool's processes
        workers = [worker.process.pid for worker in runtime._all]
    moto = _moto_pids()
    before = {pid: cpu_seconds(pid) or 0.0 for pid in workers + moto}
    engine_cpu[0] = 0.0
    invocations: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    real_invoke = client.invoke
    own_cpu = time.process_time()
    wall_start = time.time()
    started = time.perf_counter()

    def invoke(**kwargs: Any) -> Any:
        begin = time.perf_counter()
        response = real_invoke(**kwargs)
        body = response["Payload"].read()
        response["Payload"] = io.BytesIO(body)
        with lock:
            invocations.append((begin - started, time.perf_counter() - started, len(body)))
        return response

    client.invoke = invoke
    try:
        rows = list(
            fetch_leads(
                member_id=bench.member_id,
                select=SELECT,
                limit=20_000,
                lambda_client=client,
                parallel=parallel,
            )
        )
    finally:
        client.invoke = real_invoke
    wall = time.perf_counter() - started
    own = time.process_time() - own_cpu
    after = {pid: cpu_seconds(pid) or 0.0 for pid in before}
    stats = bench.emulator.stats()
    item = bench.client("dynamodb").get_item(
        TableName=bench.table("RateLimitTable"),
        Key={"bucket_id": {"S": f"portal#{bench.member_id}"}},
        ConsistentRead=True,
    )
    tat = float(item.get("Item", {}).get("tat", {}).get("N", "nan"))
    print(
        f"parallel={parallel}: {len(rows):,} leads in {wall:.2f} s; {stats['requests']} REST requests, "
        f"{stats['http_503']} x 503, modeled {stats['operating_seconds']:.2f} s; "
        f"tokens taken from the shared bucket ~{(tat - wall_start) * 2:.0f}"
    )
    for begin, end, size in sorted(invocations):
        print(
            f"  invocation {begin:5.2f} -> {end:5.2f} s ({end - begin:4.2f} s), answer {size / 1e6:4.2f} MB"
        )
    cpu_workers = " ".join(f"{after[pid] - before[pid]:.2f}" for pid in workers)
    cpu_moto = sum(after[pid] - before[pid] for pid in moto)
    print(
        f"  CPU s: LeadsFunction workers {cpu_workers}; moto {cpu_moto:.2f}; this process (emulator, "
        f"Lambda front, client) {own:.2f}, of which the emulator's engine {engine_cpu[0]:.2f}",
        flush=True,
    )


def main(argv: list[str]) -> int:
    """Run the breakdown."""
    parallel = int(argv[0]) if argv else 5
    runs = int(argv[1]) if len(argv) > 1 else 3
    os.environ.update(FAKE_AWS)
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-central-1")
    with bench_stack(leads=N, workers=parallel + 1, emulator_settings=EXPORT_EMULATOR) as bench:
        bench.emulator.seed_leads(N, seed=1)
        bench.reset_portal()
        bench.warm("LeadsFunction", {"member_id": bench.member_id, "limit": 2_000}, parallel)
        engine = bench.emulator._portal_app.engine
        handle = engine.handle
        engine_cpu = [0.0]

        def timed_handle(*args: Any, **kwargs: Any) -> Any:
            begin = time.thread_time()
            try:
                return handle(*args, **kwargs)
            finally:
                engine_cpu[0] += time.thread_time() - begin

        engine.handle = timed_handle
        client = bench.lambda_client()
        for _ in range(runs):
            _one(bench, client, parallel, engine_cpu)
    return 0


if __name__ == "__main__":
    # The functions log to stderr (as CloudWatch would collect them); keep them off the console.
    sys.stderr.flush()
    log = os.open(os.devnull, os.O_WRONLY)
    os.dup2(log, 2)
    sys.exit(main(sys.argv[1:]))
