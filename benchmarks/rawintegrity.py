"""Benchmark: raw files per minute through the rawintegrity flow, registering in Rucio in batches of
100 against one registration per file.

    .venv/bin/python benchmarks/rawintegrity.py              # 300 files per mode
    .venv/bin/python benchmarks/rawintegrity.py --files 1000

Runs on the test stack (tests/stack: PostgreSQL, Temporal, Rucio on this checkout's test ports,
started if needed) with a database, scope and namespace of its own, one real worker, and the
stack's tape service migrating at once. Each mode writes ``--files`` small files to an online
folder, puts them all, and times from the put to the last file Done (tape verified, registered,
removed online); a tape RSE of its own per mode gives each its own batcher. It also times the
catalogue alone: the same number of replicas added to Rucio 100 a call, and one a call.

Results go to ``benchmarks/results/rawintegrity-<UTC time>.json`` and the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "stack"), str(REPO / "benchmarks")]

from sqlmodel import Session  # noqa: E402
from temporalio.client import Client  # noqa: E402

from report import write_results  # noqa: E402
from support import WorkerProcess, poll_until, stack_settings  # noqa: E402
from unembargo.adapters import tape_replicas  # noqa: E402
from unembargo.client import rawintegrity as ri  # noqa: E402
from unembargo.devstack import stack  # noqa: E402
from unembargo.devstack import tape as migrator  # noqa: E402
from unembargo.models import rawintegrity as r  # noqa: E402
from unembargo.models.locations import DataLocation, LocationType, StorageType, upsert_location  # noqa: E402
from unembargo.models.settings import Settings  # noqa: E402
from unembargo.models.tables import connect  # noqa: E402

POLICY = r.RawPolicy(
    migration_first_s=0.2, migration_backoff=1.5, migration_max_interval_s=1.0, heartbeat_s=10.0
)


def locations(settings: Settings, root: Path, tag: str) -> r.RawIntegritySettings:
    """An online disk, a tape and a catalogue location of the run's own."""
    config = r.RawIntegritySettings(
        online_location=f"bench-online-{tag}", tape_location=f"bench-tape-{tag}",
        catalogue_location=f"bench-cat-{tag}", rse=f"TAPE_{tag.upper()}",
    )  # fmt: skip
    (root / "online").mkdir(parents=True)
    (root / "tape").mkdir()
    with Session(connect(settings.database_url.get_secret_value())) as session:
        site = f"bench-{tag}"
        for loc in (
            DataLocation(name=config.online_location, site=site, type=LocationType.SOURCE,
                         storage=StorageType.DISK, path=str(root / "online")),
            DataLocation(name=config.tape_location, site=site, type=LocationType.LONG_TERM_ARCHIVE,
                         storage=StorageType.TAPE, path=str(root / "tape")),
            DataLocation(name=config.catalogue_location or "", site=site, type=LocationType.CATALOGUE,
                         storage=StorageType.SERVICE, endpoint=settings.rucio_host),
        ):  # fmt: skip
            upsert_location(session, loc, short_name=f"b{tag}")
    return config


async def flow_mode(settings: Settings, client: Client, rucio: Any, files: int, batch: int) -> dict[str, Any]:
    """Files per minute from the put to the last Done, with registration batches of ``batch``."""
    tag = uuid.uuid4().hex[:6]
    root = Path(tempfile.mkdtemp(prefix="bench-raw-"))
    config = locations(settings, root, tag)
    rucio.add_rse(config.rse, deterministic=True, rse_type="TAPE")
    migrator.write_config(root / "tape", migrator.Migration(delay_s=0))
    argv = [sys.executable, "-m", "unembargo.devstack.tape", str(root / "tape")]
    service = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    run = f"LHCb/2026/RAW/run{tag}"
    for i in range(files):
        path = root / "online" / run / f"run_{i:05d}.raw"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1024))
    env = {f"UNEMBARGO_RAWINTEGRITY_{k.upper()}": str(v) for k, v in config.model_dump().items() if v}
    names = [config.online_location, config.tape_location, config.catalogue_location or ""]
    worker = WorkerProcess(settings, names, env=env)
    try:
        with Session(connect(settings.database_url.get_secret_value())) as session:
            lfns = ri.online_lfns(session, config, run)
            where = ri.route(session, config)
        policy = r.RawPolicy(**{**POLICY.__dict__, "register_batch_size": batch})
        t0 = time.monotonic()
        await ri.put(client, settings, where, lfns, policy)

        async def done() -> bool:
            return (await ri.status(client, run)).by_state.get(r.State.DONE, 0) == files

        await poll_until(done, 1800, f"{files} files Done", interval=1.0)
        elapsed = time.monotonic() - t0
    finally:
        worker.stop()
        service.terminate()
        service.wait(10)
    return {
        "files": files,
        "batch": batch,
        "seconds": round(elapsed, 1),
        "files_per_min": round(files * 60 / elapsed),
    }


def catalogue_mode(settings: Settings, rucio: Any, files: int, batch: int) -> dict[str, Any]:
    """Replicas per minute added to Rucio ``batch`` a call (one list and one add per call)."""
    rse = f"TAPE_{uuid.uuid4().hex[:6].upper()}"
    rucio.add_rse(rse, deterministic=True, rse_type="TAPE")
    run = f"bench/cat{uuid.uuid4().hex[:6]}"
    wanted = [tape_replicas.Wanted(f"{run}/f{i:05d}.raw", 1024, f"{i:08x}") for i in range(files)]
    t0 = time.monotonic()
    for start in range(0, files, batch):
        tape_replicas.register(rucio, settings.rucio_scope, rse, wanted[start : start + batch])
    elapsed = time.monotonic() - t0
    return {
        "files": files,
        "batch": batch,
        "seconds": round(elapsed, 1),
        "files_per_min": round(files * 60 / elapsed),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from conftest import TEST_SERVICES, isolate
    from unembargo.adapters.rucio_client import connect as rucio_connect

    base = stack_settings()
    for service in stack.SERVICES:
        if service.name in TEST_SERVICES:
            service.ensure(base)
    settings = await asyncio.to_thread(isolate, base, Path(tempfile.mkdtemp(prefix="bench-rawintegrity-")))
    rucio = rucio_connect(settings)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    result: dict[str, Any] = {"files": args.files}
    result["catalogue_batched"] = catalogue_mode(settings, rucio, args.files, 100)
    result["catalogue_per_file"] = catalogue_mode(settings, rucio, args.files, 1)
    result["flow_batched"] = await flow_mode(settings, client, rucio, args.files, 100)
    result["flow_per_file"] = await flow_mode(settings, client, rucio, args.files, 1)
    return result


def table(result: dict[str, Any]) -> str:
    rows = [("", "batches of 100", "one per file")]
    for what, key in (("Rucio registration alone", "catalogue"), ("whole flow (put to Done)", "flow")):
        b, p = result[f"{key}_batched"], result[f"{key}_per_file"]
        rows.append((f"{what}, {b['files']} files", f"{b['files_per_min']} files/min ({b['seconds']} s)",
                     f"{p['files_per_min']} files/min ({p['seconds']} s)"))  # fmt: skip
    lines = [f"| {' | '.join(rows[0])} |", "|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows[1:]]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=300, help="files per mode")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    path = write_results("rawintegrity", result)
    print(table(result))
    print(f"results: {path.relative_to(REPO)}")
