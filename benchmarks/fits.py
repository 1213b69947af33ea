"""Benchmark: FITS files per minute from the DHS disk to the archive, and how it scales with workers.

    .venv/bin/python benchmarks/fits.py                         # 120 files of 512x512, 1 and 2 workers
    .venv/bin/python benchmarks/fits.py --files 30 --workers 1  # a quick look

Runs on the test stack (tests/stack: moto S3 and Temporal on this checkout's test ports,
started if needed) with a database and namespace of its own. Per variant (``--workers``
real ``unembargo worker`` processes), locations of its own: a DHS and a dataflow disk and
an archive bucket. ``--files`` real FITS files (a night's mix of GMOS-N and NIRI science
and calibration frames, ``--side`` pixels square) are written onto the DHS disk, already
settled; then ``unembargo fits watch`` starts and every file goes through copy, ingest,
export (md5 asked first and checked after), archive ingest, preview and calibration
associations. Reported: files per minute (watch start to the last file's run closed),
median and p95 seconds per file (its run's start to close), and MB/s of FITS data.
Results go to ``benchmarks/results/fits-<UTC time>.json`` and the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "stack"), str(REPO / "benchmarks")]

import fits_samples as fs  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from sqlmodel import Session  # noqa: E402
from temporalio.client import Client, WorkflowExecutionStatus  # noqa: E402
from test_fits import _locations  # noqa: E402

from report import write_results  # noqa: E402
from support import WorkerProcess, poll_until, stack_settings  # noqa: E402
from unembargo.client.fits import start_watch  # noqa: E402
from unembargo.devstack import stack  # noqa: E402
from unembargo.models import fits_flow as ff  # noqa: E402
from unembargo.models.fits import FitsSettings  # noqa: E402
from unembargo.models.tables import connect  # noqa: E402


def write_files(folder: Path, count: int, side: int, night: int) -> tuple[list[str], int]:
    """``count`` FITS files of the night's kinds, ``side`` pixels square; names and bytes.

    Names are of the night ``night`` (a file's name is its workflow's id: each variant its own)."""
    kinds = fs.night()
    rng = np.random.default_rng(1)
    names, total = [], 0
    for i in range(count):
        s = dataclasses.replace(kinds[i % len(kinds)], name=f"N{night}S{i + 1:04d}.fits")
        header = fs.header(s)
        data = rng.normal(1000, 10, (side, side)).astype(np.float32)
        if s.instrument.startswith("GMOS"):
            ext = fits.ImageHDU(data, name="SCI")
            ext.header["CCDSUM"] = s.binning.replace("x", " ")
            hdul = fits.HDUList([fits.PrimaryHDU(header=header), ext])
        else:
            hdul = fits.HDUList([fits.PrimaryHDU(data, header=header)])
        path = folder / s.name
        hdul.writeto(path, checksum=True)
        fs.age(path, 60)
        names.append(s.name)
        total += path.stat().st_size
    return names, total


async def variant(
    settings: Any, client: Client, workers: int, count: int, side: int, night: int
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    root = Path(tempfile.mkdtemp(prefix="bench-fits-"))
    rows = _locations(settings, root, tag, mirror=False)
    names, size = write_files(root / "dhs", count, side, night)
    env = {
        "UNEMBARGO_FITS_DHS": rows[0].name,
        "UNEMBARGO_FITS_DATAFLOW": rows[1].name,
        "UNEMBARGO_FITS_DESTINATIONS": f'["{rows[2].name}"]',
        "UNEMBARGO_FITS_ARCHIVE": rows[2].name,
        "UNEMBARGO_FITS_POLL_S": "1",
        "UNEMBARGO_FITS_MIN_AGE_S": "1",
    }
    os.environ.update(env)
    procs = [WorkerProcess(settings, [r.name for r in rows], env=env) for _ in range(workers)]
    try:
        await asyncio.sleep(3)  # the workers poll their queues
        t0 = time.monotonic()
        with Session(connect(settings.database_url.get_secret_value())) as session:
            await start_watch(client, settings, FitsSettings(), session)

        async def closed() -> bool:
            query = f'WorkflowType = "{ff.FILE_WORKFLOW}" AND ExecutionStatus = "Completed"'
            done = [w async for w in client.list_workflows(query) if w.id.removeprefix("fits-") in set(names)]
            return len(done) >= len(names)

        await poll_until(closed, 1800, f"{count} files archived", interval=1)
        elapsed = time.monotonic() - t0
        per_file = []
        for name in names:
            desc = await client.get_workflow_handle(ff.fits_workflow_id(name)).describe()
            assert desc.status == WorkflowExecutionStatus.COMPLETED and desc.close_time is not None
            per_file.append((desc.close_time - desc.start_time).total_seconds())
        await client.get_workflow_handle(ff.watch_workflow_id(rows[0].name)).terminate("benchmark over")
    finally:
        for p in procs:
            p.stop()
        for key in env:
            os.environ.pop(key, None)
    per_file.sort()
    return {
        "workers": workers,
        "files": count,
        "mb": round(size / 1e6, 1),
        "seconds": round(elapsed, 1),
        "files_per_min": round(count / elapsed * 60, 1),
        "mb_per_s": round(size / 1e6 / elapsed, 2),
        "file_p50_s": round(statistics.median(per_file), 2),
        "file_p95_s": round(per_file[min(len(per_file) - 1, int(0.95 * len(per_file)))], 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from conftest import TEST_SERVICES, isolate

    base = stack_settings()
    for service in stack.SERVICES:
        if service.name in TEST_SERVICES:
            service.ensure(base)
    settings = await asyncio.to_thread(isolate, base, Path(tempfile.mkdtemp(prefix="bench-fits-")))
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    runs = [
        await variant(settings, client, n, args.files, args.side, 20251201 + i)
        for i, n in enumerate(args.workers)
    ]
    return {"when": datetime.now(UTC).isoformat(), "side": args.side, "cpus": os.cpu_count(), "runs": runs}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| workers | files | MB | files/min | MB/s | per file p50 / p95 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['workers']} | {r['files']} | {r['mb']} | {r['files_per_min']} | {r['mb_per_s']} "
            f"| {r['file_p50_s']} / {r['file_p95_s']} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=120, help="FITS files per variant")
    parser.add_argument("--side", type=int, default=512, help="image side in pixels (float32)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes per variant")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    path = write_results("fits", result)
    print(table(result))
    print(f"results: {path.relative_to(REPO)}")
