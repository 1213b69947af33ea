"""Benchmark: seconds from a file becoming available at its destination to its message received.

    .venv/bin/python benchmarks/carousel.py             # 10 files per policy
    .venv/bin/python benchmarks/carousel.py --files 20

Runs on the test stack (tests/stack: PostgreSQL, Temporal, Rucio on this checkout's test ports,
started if needed) with a database, scope and namespace of its own, the embedded STOMP broker in
this process and one real worker. For each lock-check policy it stages a dataset from a tape RSE
with the stack's FTS3 stand-in, one file at a time with a random pause (0.5 to 4 s, as files come
off tape), and times from the replica marked available to its message on a real subscription.

Results go to ``benchmarks/results/carousel-<UTC time>.json`` and the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "stack"), str(REPO / "benchmarks")]

from temporalio.client import Client  # noqa: E402

from report import write_results  # noqa: E402
from support import WorkerProcess, carousel_location, poll_until, stack_settings  # noqa: E402
from unembargo.adapters.stomp import StompConnection  # noqa: E402
from unembargo.client import carousel as api  # noqa: E402
from unembargo.devstack import broker, carousel_copy, procs, rucio_server, stack  # noqa: E402
from unembargo.models.carousel import CarouselPolicy, CarouselRequest  # noqa: E402
from unembargo.models.settings import Settings  # noqa: E402

POLICIES = {
    "production defaults (5 s, x1.5, max 30 s)": CarouselPolicy(),
    "fast (0.3 s, x1.5, max 1 s)": CarouselPolicy(poll_first_s=0.3, poll_max_s=1.0),
}


async def run(settings: Settings, client: Client, rucio: Any, files: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    root = Path(tempfile.mkdtemp(prefix="bench-carousel-"))
    scope = settings.rucio_scope
    tape, disk = f"BTAPE_{tag.upper()}", f"BDISK_{tag.upper()}"
    rucio.add_rse(tape, deterministic=True, rse_type="TAPE")
    for rse in (tape, disk):
        (root / rse / scope).mkdir(parents=True)
        rucio_server.ensure_rse(rucio, rse, root / rse / scope)
        rucio.set_local_account_limit(settings.rucio_account, rse, 10**12)
    location = f"bench-carousel-{tag}"
    queues = carousel_location(settings, location, f"bsite-{tag}", f"b{tag}", root / disk / scope)
    [port] = procs.free_ports(1)
    srv, _ = broker.start_thread(port)
    worker = WorkerProcess(settings, [location], env={"UNEMBARGO_CAROUSEL_BROKER_PORT": str(port)})
    result: dict[str, Any] = {}
    try:
        for label, policy in POLICIES.items():
            result[label] = await one_policy(client, settings, rucio, queues, port, tape, disk, files, policy)
    finally:
        worker.stop()
        broker.stop_thread(srv)
    return result


async def one_policy(
    client: Client, settings: Settings, rucio: Any, queues: dict[str, str], port: int,
    tape: str, disk: str, files: int, policy: CarouselPolicy,
) -> dict[str, Any]:  # fmt: skip
    scope = settings.rucio_scope
    dataset = f"bench-{uuid.uuid4().hex[:8]}"
    names = [f"{dataset}.f{i:03d}" for i in range(files)]
    for name in names:
        path = rucio_server.pfn_path(rucio, tape, scope, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.randbytes(2048))
    rucio.add_replicas(rse=tape, files=[
        {"scope": scope, "name": n, "bytes": 2048,
         "adler32": f"{zlib.adler32(rucio_server.pfn_path(rucio, tape, scope, n).read_bytes()):08x}"}
        for n in names
    ])  # fmt: skip
    rucio.add_dataset(scope, dataset)
    rucio.attach_dids(scope, dataset, [{"scope": scope, "name": n} for n in names])
    rucio.set_status(scope, dataset, open=False)
    destination = f"/queue/bench-{dataset}"
    policy = CarouselPolicy(**{**policy.__dict__, "destination": destination})
    latencies = []
    with StompConnection("127.0.0.1", port) as sub:
        sub.subscribe(destination)
        handle = await api.stage(
            client, settings, queues, CarouselRequest(scope, dataset, tape, disk), policy
        )

        async def ruled() -> bool:
            return (await api.state(client, scope, dataset)).in_total_files == files

        await poll_until(ruled, 120, "the first lock check")
        for name in names:
            await asyncio.sleep(random.uniform(0.5, 4.0))  # files come off tape at their own pace
            carousel_copy.stage_file(rucio, scope, name, tape, disk)
            t0 = time.monotonic()
            frame = await asyncio.to_thread(sub.receive, 120.0)
            assert frame is not None, f"no message for {name}"
            latencies.append(time.monotonic() - t0)
        await handle.result()
    ordered = sorted(latencies)
    return {
        "files": files,
        "median_s": round(statistics.median(ordered), 2),
        "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "max_s": round(ordered[-1], 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from conftest import TEST_SERVICES, isolate
    from unembargo.adapters.rucio_client import connect as rucio_connect

    base = stack_settings()
    for service in stack.SERVICES:
        if service.name in TEST_SERVICES:
            service.ensure(base)
    settings = await asyncio.to_thread(isolate, base, Path(tempfile.mkdtemp(prefix="bench-carousel-")))
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    return await run(settings, client, rucio_connect(settings), args.files)


def table(result: dict[str, Any]) -> str:
    lines = ["| lock checks | files | median | p90 | max |", "|---|---|---|---|---|"]
    for label, r in result.items():
        lines.append(f"| {label} | {r['files']} | {r['median_s']} s | {r['p90_s']} s | {r['max_s']} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10, help="files per policy")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    path = write_results("carousel", result)
    print(table(result))
    print(f"results: {path.relative_to(REPO)}")
