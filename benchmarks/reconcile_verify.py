"""Benchmark: ``unembargo reconcile --verify`` on a day of really unembargoed exposures.

    .venv/bin/python benchmarks/reconcile_verify.py                          # 100 exposures x 9 raws
    .venv/bin/python benchmarks/reconcile_verify.py --exposures 10 --detectors 205

Runs on the test stack (tests/stack: PostgreSQL, moto S3, Temporal, Rucio on this checkout's
test ports, started if needed) with a bucket, repos, database and namespace of its own. It
seeds ``--exposures`` small exposures (``--detectors`` raws of ``--file-size`` bytes each,
and their sidecars) into the embargo bucket and butler, unembargoes them all with one real
worker (zips, yamls, main-butler ingest, Rucio), then times the day's reconcile in process
(the sources at once, as the command asks them) ``--repeat`` times without and with
``--verify``: each verify run lists the day's objects, asks the butlers for the records and
datasets of ``VERIFY_CHUNK`` exposures at a time, reads every zip and yaml and compares them.

The time of --verify grows with the exposures (the chunks and files) and the bytes of the
zips, so the table extrapolates linearly to a day of 1000 exposures of the same size.
Results go to ``benchmarks/results/reconcile_verify.json`` (one entry per size, the latest run
of each) and the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "stack"), str(REPO / "benchmarks")]

from sqlmodel import Session  # noqa: E402
from temporalio.client import Client  # noqa: E402

from report import RESULTS  # noqa: E402
from support import WorkerProcess, add_locations, stack_settings  # noqa: E402
from unembargo.adapters.butler_inventory import VERIFY_CHUNK  # noqa: E402
from unembargo.client.progress import watch  # noqa: E402
from unembargo.client.reconcile import VERIFY_THREADS, ReconcileRequest, reconcile_day  # noqa: E402
from unembargo.devstack import stack  # noqa: E402
from unembargo.devstack.seed import seed_exposure  # noqa: E402
from unembargo.engine.starter import start_exposures  # noqa: E402
from unembargo.models.exposure import Exposure, Policy  # noqa: E402
from unembargo.models.tables import connect, step_queues  # noqa: E402

# A day of its own, long past its embargo: every exposure is due.
DAY_OBS = 19990101
DAY_SIZE = 1000
COLUMNS = ("s3", "butler", "destination", "rucio", "temporal", "verify", "total")


async def unembargo_day(settings: Any, client: Client, seeded: list[Any]) -> float:
    """Start every seeded exposure's workflow and wait until all completed; seconds taken."""
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    exposures = [Exposure("LSSTCam", s.day_obs, s.obs_id, s.exposure_id) for s in seeded]
    started = time.monotonic()
    outcomes = await start_exposures(client, settings.workflow_task_queue, exposures, queues, Policy())
    finished = await watch(client, [o.workflow_id for o in outcomes], lambda rows: None, interval=2.0)
    failed = [p for p in finished if p.status != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} exposure(s) did not complete, e.g. {failed[0]}")
    return time.monotonic() - started


async def measure(settings: Any, client: Client, repeat: int) -> list[dict[str, Any]]:
    runs = []
    for verify in [False, True] * repeat:
        load = os.getloadavg()[0]
        rec = await reconcile_day(settings, ReconcileRequest(day_obs=DAY_OBS, verify=verify), client)
        if not rec.ok or rec.counts["unembargoed"] != len(rec.verdicts):
            problems = [(v.obs_id, v.klass, v.reason) for v in rec.verdicts if v.klass != "unembargoed"]
            raise RuntimeError(f"the day is not all unembargoed: {problems[:3]}")
        runs.append(
            {
                "verify": verify,
                "seconds": {k: round(v, 3) for k, v in rec.seconds.items()},
                "load_average_1m": round(load, 2),
            }
        )
    return runs


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from conftest import TEST_SERVICES, isolate

    base = stack_settings()
    for service in stack.SERVICES:
        if service.name in TEST_SERVICES:
            service.ensure(base)
    settings = await asyncio.to_thread(isolate, base, Path(tempfile.mkdtemp(prefix="bench-verify-")))
    locations = add_locations(settings, "bench")
    worker = WorkerProcess(settings, locations)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    try:
        started = time.monotonic()
        detectors = range(args.detectors)
        seeded = [
            seed_exposure(
                settings, DAY_OBS, seq, file_size=args.file_size, detectors=detectors, expected=detectors
            )
            for seq in range(1, args.exposures + 1)
        ]
        seed_s = time.monotonic() - started
        unembargo_s = await unembargo_day(settings, client, seeded)
        runs = await measure(settings, client, args.repeat)
    finally:
        worker.stop()
    zips = sorted((settings.dest_root / "LSSTCam" / str(DAY_OBS)).glob("*.zip"))
    return {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "exposures": args.exposures,
        "raws_per_exposure": args.detectors,
        "file_size": args.file_size,
        "zip_bytes": sum(z.stat().st_size for z in zips),
        "verify_chunk": VERIFY_CHUNK,
        "verify_threads": VERIFY_THREADS,
        "seed_s": round(seed_s, 1),
        "unembargo_s": round(unembargo_s, 1),
        "runs": runs,
    }


def summary(result: dict[str, Any]) -> dict[str, float]:
    """Median totals without and with --verify, and the verify part extrapolated to a day."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    plain = median([r["seconds"]["total"] for r in result["runs"] if not r["verify"]])
    deep = median([r["seconds"]["total"] for r in result["runs"] if r["verify"]])
    verify = median([r["seconds"]["verify"] for r in result["runs"] if r["verify"]])
    scale = DAY_SIZE / result["exposures"]
    return {
        "total_s": plain,
        "total_verify_s": deep,
        "verify_s": verify,
        "verify_ms_per_exposure": 1000 * verify / result["exposures"],
        "day_verify_s_extrapolated": verify * scale,
    }


def table(result: dict[str, Any]) -> str:
    s = summary(result)
    n, raws = result["exposures"], result["raws_per_exposure"]
    lines = [
        f"reconcile --verify, {n} exposures x {raws} raws of {result['file_size']} B "
        f"({result['zip_bytes'] / 2**20:.1f} MiB of zips), chunks of {result['verify_chunk']}, "
        f"{result['verify_threads']} threads; seeded in {result['seed_s']} s, unembargoed in "
        f"{result['unembargo_s']} s",
        "",
        "| run | s3 | butler | destination | rucio | temporal | verify | total | load (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        sec = r["seconds"]
        cells = [f"{sec[k]:.2f}" if k in sec else "-" for k in COLUMNS]
        label = "--verify" if r["verify"] else "names only"
        lines.append(f"| {label} | {' | '.join(cells)} | {r['load_average_1m']:.2f} |")
    lines += [
        "",
        f"median: {s['total_s']:.1f} s by names, {s['total_verify_s']:.1f} s with --verify "
        f"(verify {s['verify_s']:.1f} s, {s['verify_ms_per_exposure']:.0f} ms an exposure); "
        f"a day of {DAY_SIZE} such exposures: about {s['day_verify_s_extrapolated']:.0f} s of verify "
        "(linear in exposures and zip bytes)",
    ]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exposures", type=int, default=100)
    parser.add_argument(
        "--detectors", type=int, default=9, help="raws per exposure (205: a full focal plane)"
    )
    parser.add_argument("--file-size", type=int, default=4096, help="bytes per raw")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each kind to time")
    args = parser.parse_args(argv)
    result = asyncio.run(main(args))
    result["summary"] = summary(result)
    # One entry per size measured (the latest of each), so a small and a full-size run sit side by side.
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "reconcile_verify.json"
    sizes = json.loads(out.read_text()) if out.is_file() else {}
    sizes[f"{args.exposures} exposures x {args.detectors} raws"] = result
    out.write_text(json.dumps(sizes, indent=2))
    print(table(result))
    print(f"\nwritten to {out.relative_to(REPO)}")


if __name__ == "__main__":
    run()
