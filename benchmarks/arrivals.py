"""Benchmark: bucket notifications through `unembargo listen` to raws in the embargo butler,
and from the embargo end to the exposure unembargoed.

    .venv/bin/python benchmarks/arrivals.py                # burst of 205 in 1 s, then 2050 in a minute
    .venv/bin/python benchmarks/arrivals.py --exposures 3  # a shorter sustained phase

Runs on the test stack (tests/stack: PostgreSQL, moto S3, Temporal, Rucio on this checkout's
test ports, started if needed) with a bucket, repos, database and namespace of its own, one
real worker and one real `unembargo listen`.

- burst: one science exposure whose embargo (``--embargo``) ends shortly after it is
  complete; its 205 raw notifications are posted within one second (32 at a time), then
  its sidecars and expectedSensors. Reports ack latency, the time to ingest all 205, and
  the latency from the embargo end to the unembargo workflow's start and its completion.
- sustained: ``--exposures`` calibrations (10: 2050 raws) posted evenly over ``--minute``
  seconds. Reports ack latency p50/p99 and the ingest rate.

Results go to ``benchmarks/results/arrivals-<UTC time>.json`` and the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "stack"), str(REPO / "benchmarks")]

import httpx  # noqa: E402
from temporalio.client import Client, WorkflowExecutionStatus  # noqa: E402

# The secret the test's Listener gives `unembargo listen` (in its environment).
from test_arrivals import SECRET  # noqa: E402

from report import write_results  # noqa: E402
from support import WorkerProcess, add_locations, poll_until, stack_settings  # noqa: E402
from unembargo.client.arrivals import arrival_state  # noqa: E402
from unembargo.devstack import lsstcam, stack  # noqa: E402
from unembargo.devstack.notify import body, ceph_record  # noqa: E402
from unembargo.devstack.seed import CADENCE, NIGHT_START, plan_exposure, seed_exposure  # noqa: E402
from unembargo.models.names import workflow_id  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def recent(now: datetime, back_s: float) -> tuple[int, int]:
    """(day_obs, seq_num) of a synthetic exposure that ended about ``back_s`` before now."""
    for days in range(3):
        day_obs = lsstcam.day_obs_of(now - timedelta(days=days))
        first = lsstcam.day_obs_start(day_obs) + NIGHT_START
        if first < now - timedelta(seconds=back_s):
            return day_obs, int((now - timedelta(seconds=back_s) - first) / CADENCE) + 1
    raise RuntimeError("no night began in the last three days")


async def post_all(url: str, bucket: str, keys: list[tuple[str, int, str]], seconds: float) -> list[float]:
    """Post one Ceph notification per key, spread evenly over ``seconds``; each ack latency."""
    gate = asyncio.Semaphore(32)
    t0 = time.monotonic()
    acks: list[float] = []

    async def one(http: httpx.AsyncClient, i: int, key: str, size: int, etag: str) -> None:
        await asyncio.sleep(max(0.0, t0 + seconds * i / max(1, len(keys)) - time.monotonic()))
        async with gate:
            started = time.monotonic()
            r = await http.post(url, content=body(ceph_record(bucket, key, size, etag, SECRET)))
            acks.append(time.monotonic() - started)
            if r.status_code != 200:
                raise RuntimeError(f"{key}: {r.status_code} {r.text}")

    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(one(http, i, *k) for i, k in enumerate(keys)))
    return acks


def folder_keys(settings: Any, prefix: str) -> list[tuple[str, int, str]]:
    from unembargo.adapters.s3 import list_folder
    from unembargo.devstack.butler_repos import s3_client

    return [(o.key, o.size, o.etag) for o in list_folder(s3_client(settings), settings.s3_bucket, prefix)]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from test_arrivals import Listener

    from conftest import TEST_SERVICES, isolate

    base = stack_settings()
    for service in stack.SERVICES:
        if service.name in TEST_SERVICES:
            service.ensure(base)
    settings = await asyncio.to_thread(isolate, base, Path(tempfile.mkdtemp(prefix="bench-arrivals-")))
    locations = add_locations(settings, "bench")
    env = {"UNEMBARGO_EMBARGO_PERIOD": f"{args.embargo}s", "UNEMBARGO_HEARTBEAT_TIMEOUT": "10s"}
    worker = WorkerProcess(settings, locations, env=env)
    listener = Listener(settings)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    url = f"{listener.url}/notify"
    try:
        await poll_until(listener.up, 60, "the endpoint")
        # Burst: one science exposure, its 205 raws announced within one second.
        day_obs, seq = recent(datetime.now(UTC), 45)
        plan = plan_exposure(day_obs, seq, "science")
        seeded = seed_exposure(settings, day_obs, seq, file_size=16 * 1024, ingest=False)
        keys = folder_keys(settings, seeded.prefix)
        raws = [k for k in keys if k[0].endswith(".fits")]
        rest = [k for k in keys if not k[0].endswith(".fits")]
        t0 = time.monotonic()
        burst_acks = await post_all(url, settings.s3_bucket, raws, 1.0)
        burst_post_s = time.monotonic() - t0
        burst_acks += await post_all(url, settings.s3_bucket, rest, 0.0)

        async def complete(obs_id: str) -> bool:
            try:
                return (await arrival_state(client, "LSSTCam", obs_id)).complete
            except Exception:  # noqa: BLE001 - not queryable yet
                return False

        await poll_until(lambda: complete(plan.obs_id), 300, "the burst exposure to complete", interval=0.1)
        burst_ingest_s = time.monotonic() - t0
        completed_at = datetime.now(UTC)
        handle = client.get_workflow_handle(workflow_id("LSSTCam", plan.obs_id))

        async def done() -> bool:
            try:
                return (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
            except Exception:  # noqa: BLE001 - not started yet
                return False

        await poll_until(done, 600, "the burst exposure to be unembargoed", interval=0.5)
        state = await arrival_state(client, "LSSTCam", plan.obs_id)
        desc = await handle.describe()
        embargo_end = datetime.fromisoformat(state.embargo_end or "")
        assert desc.close_time is not None
        to_start = (desc.start_time - embargo_end).total_seconds()
        to_done = (desc.close_time - embargo_end).total_seconds()
        complete_before_end = completed_at < embargo_end

        # Sustained: calibrations, 205 raws each, spread over a minute.
        sustained: list[tuple[str, int, str]] = []
        obs_ids = []
        day2 = lsstcam.day_obs_of(datetime.now(UTC) - timedelta(days=3))
        for i in range(args.exposures):
            exp = seed_exposure(
                settings, day2, 500 + i, observation_type="bias", file_size=16 * 1024, ingest=False
            )
            obs_ids.append(exp.obs_id)
            sustained += folder_keys(settings, exp.prefix)
        sus_raws = sum(1 for k in sustained if k[0].endswith(".fits"))
        t1 = time.monotonic()
        sus_acks = await post_all(url, settings.s3_bucket, sustained, args.minute)
        sus_post_s = time.monotonic() - t1
        for obs_id in obs_ids:
            await poll_until(lambda o=obs_id: complete(o), 900, f"{obs_id} to complete", interval=0.5)
        sus_ingest_s = time.monotonic() - t1
    finally:
        listener.stop()
        worker.stop()
    return {
        "when": datetime.now(UTC).isoformat(),
        "burst": {
            "notifications": len(burst_acks),
            "raws": len(raws),
            "raw_posts_s": round(burst_post_s, 2),
            "ack_p50_ms": round(statistics.median(burst_acks) * 1000, 1),
            "ack_p99_ms": round(pct(burst_acks, 0.99) * 1000, 1),
            "all_ingested_s": round(burst_ingest_s, 1),
            "ingest_raws_per_s": round(len(raws) / burst_ingest_s, 1),
            "embargo_s": args.embargo,
            "complete_before_embargo_end": bool(complete_before_end),
            "embargo_end_to_started_s": round(to_start, 1),
            "embargo_end_to_unembargoed_s": round(to_done, 1),
        },
        "sustained": {
            "exposures": args.exposures,
            "notifications": len(sus_acks),
            "raws": sus_raws,
            "posted_over_s": round(sus_post_s, 1),
            "ack_p50_ms": round(statistics.median(sus_acks) * 1000, 1),
            "ack_p99_ms": round(pct(sus_acks, 0.99) * 1000, 1),
            "all_ingested_s": round(sus_ingest_s, 1),
            "ingest_raws_per_s": round(sus_raws / sus_ingest_s, 1),
        },
    }


def table(result: dict[str, Any]) -> str:
    b, s = result["burst"], result["sustained"]
    rows = [
        ("", "burst (1 exposure)", f"sustained ({s['exposures']} exposures)"),
        ("notifications posted", f"{b['notifications']} ({b['raws']} raws in {b['raw_posts_s']} s)",
         f"{s['notifications']} over {s['posted_over_s']} s"),
        ("ack latency p50 / p99", f"{b['ack_p50_ms']} / {b['ack_p99_ms']} ms",
         f"{s['ack_p50_ms']} / {s['ack_p99_ms']} ms"),
        ("all raws ingested after", f"{b['all_ingested_s']} s", f"{s['all_ingested_s']} s"),
        ("ingest rate", f"{b['ingest_raws_per_s']} raws/s", f"{s['ingest_raws_per_s']} raws/s"),
        ("embargo end -> unembargo started", f"{b['embargo_end_to_started_s']} s", "-"),
        ("embargo end -> unembargoed", f"{b['embargo_end_to_unembargoed_s']} s", "-"),
    ]  # fmt: skip
    lines = [f"| {' | '.join(rows[0])} |", "|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows[1:]]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exposures", type=int, default=10, help="exposures of the sustained phase")
    parser.add_argument("--minute", type=float, default=60.0, help="seconds the sustained phase spreads over")
    parser.add_argument("--embargo", type=int, default=90, help="embargo period (s) of the burst exposure")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    path = write_results("arrivals", result)
    print(table(result))
    print(f"results: {path.relative_to(REPO)}")
