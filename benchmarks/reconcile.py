"""Benchmark: ``unembargo reconcile`` on one day of 1000 exposures of 205 objects each.

    .venv/bin/unembargo dev up
    .venv/bin/python benchmarks/reconcile.py            # seeds once (about 20 min), then measures
    .venv/bin/python benchmarks/reconcile.py --fresh    # seed a new day from scratch

The day is seeded into the running local stack (the settings' endpoints), under
names of its own: a bucket, two butler repos, a destination root, a Rucio scope and
RSE, a Temporal namespace and a database. Seeding takes the fast path: tiny objects,
registry-only datasets (``insertDatasets``), bulk Rucio calls and a stub workflow for
the Temporal runs, but every source holds what a real day leaves in it. A later run
finds the seeded day (``<state_dir>/bench/reconcile/seeded.json``) and only measures.

The mix: most exposures unembargoed; ten each half-done (backup tag missing), failed
(at zip), running (at register, activity pending) and missing; the last twenty
embargoed (a rule holds them); five orphan zips at the destination.

It then runs ``unembargo reconcile --day D --json`` as a child process ``--repeat``
times (the sources asked at once, as operators run it; wall time includes start-up)
and the library once with the sources asked one after another (each source's own time).
Results go to ``benchmarks/results/reconcile-<UTC time>.json`` and to the "Measured"
section of docs/reconcile.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from report import REPO, replace_measured, write_results
from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.models import names
from unembargo.models.exposure import STEPS, Exposure, ExposureInput, Step, StepQueues
from unembargo.models.settings import EmbargoRule, Settings

DOCS = REPO / "docs" / "reconcile.md"

DAY_OBS = 20251231
INSTRUMENT = "LSSTCam"
EXPOSURES = 1000
OBJECTS = 205
ORPHANS = 5
EMBARGOED = 20
# Fates by seq_num: seq % 100 picks the odd ones out, the last EMBARGOED stay embargoed.
FATE_BY_REMAINDER = {1: "failed", 2: "running", 3: "half-done", 4: "missing"}
UPLOAD_THREADS = 32
SA_STEP = names.SA_STEP


def fate(seq: int, n: int) -> str:
    """What the seeded day says about exposure ``seq`` of ``n``."""
    if seq > n - EMBARGOED:
        return "embargoed"
    return FATE_BY_REMAINDER.get(seq % 100, "unembargoed")


def expected_counts(n: int) -> dict[str, int]:
    counts = dict.fromkeys(("unembargoed", "embargoed", "running", "failed", "half-done", "missing"), 0)
    for seq in range(1, n + 1):
        counts[fate(seq, n)] += 1
    return {**counts, "arriving": 0, "incomplete": 0, "no-butler-record": 0, "corrupt": 0, "orphan": ORPHANS}


def rules(n: int) -> list[EmbargoRule]:
    """The last EMBARGOED exposures of the day stay embargoed for a century."""
    return [
        EmbargoRule(where=f"exposure.seq_num > {n - EMBARGOED}", period=timedelta(days=36500)),
        EmbargoRule(where="", period=timedelta(hours=80)),
    ]


def obs_id(seq: int) -> str:
    return f"MC_O_{DAY_OBS}_{seq:06d}"


# ---------------------------------------------------------------- settings of its own


@dataclass(frozen=True)
class Bench:
    """The seeded day: where it lives and its size."""

    settings: Settings
    tag: str
    exposures: int
    objects: int

    @property
    def marker(self) -> Path:
        return bench_root(self.settings) / "seeded.json"


def bench_root(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "bench" / "reconcile"


def bench_settings(base: Settings, tag: str, n: int) -> Settings:
    """``base`` with a bucket, repos, destination, scope, RSE, namespace and database of the benchmark."""
    root = bench_root(base) / tag
    return base.model_copy(
        update={
            "s3_bucket": f"bench-{tag}",
            "embargo_butler": str(root / "butler" / "embargo"),
            "main_butler": str(root / "butler" / "main"),
            "dest_root": root / "dest" / f"b{tag}",
            "rucio_scope": f"b{tag}",
            "rucio_rse": f"BENCH_{tag.upper()}",
            "temporal_namespace": f"bench-{tag}",
            "database_url": SecretStr(f"sqlite:///{root / 'unembargo.db'}"),
            "workflow_task_queue": f"bench-{tag}-workflows",
            "embargo_rules": rules(n),
        }
    )


def settings_overrides(settings: Settings) -> dict[str, str]:
    """UNEMBARGO_* variables that point a child process at the benchmark's day."""
    fields = ("s3_bucket", "embargo_butler", "main_butler", "dest_root", "rucio_scope", "rucio_rse",
              "temporal_namespace", "workflow_task_queue")  # fmt: skip
    env = {f"UNEMBARGO_{f.upper()}": str(getattr(settings, f)) for f in fields}
    env["UNEMBARGO_DATABASE_URL"] = settings.database_url.get_secret_value()
    env["UNEMBARGO_EMBARGO_RULES"] = json.dumps(
        [{"where": r.where, "period": r.period.total_seconds()} for r in settings.rules()]
    )
    return env


def find_or_seed(base: Settings, n: int, objects: int, fresh: bool) -> Bench:
    """The seeded day recorded in the marker if it is still there, else a newly seeded one."""
    marker = bench_root(base) / "seeded.json"
    if not fresh and marker.exists():
        saved = json.loads(marker.read_text())
        bench = Bench(bench_settings(base, saved["tag"], n), saved["tag"], n, objects)
        if (saved["exposures"], saved["objects"]) == (n, objects) and still_seeded(bench):
            print(f"reusing the day seeded at {saved['seeded_at']} (tag {bench.tag})")
            return bench
    tag = uuid.uuid4().hex[:8]
    bench = Bench(bench_settings(base, tag, n), tag, n, objects)
    seed(bench)
    bench.marker.write_text(json.dumps({"tag": tag, "exposures": n, "objects": objects,
                                        "seeded_at": datetime.now(UTC).isoformat()}))  # fmt: skip
    return bench


def still_seeded(bench: Bench) -> bool:
    """The bucket still lists every folder (moto keeps objects in memory only)."""
    from unembargo.activities.context import Resources
    from unembargo.adapters.s3 import list_subfolders

    s3 = Resources(bench.settings).s3
    try:
        prefix = names.day_prefix(bench.settings.s3_prefix, INSTRUMENT, DAY_OBS)
        return len(list_subfolders(s3, bench.settings.s3_bucket, prefix)) == bench.exposures
    except s3.exceptions.NoSuchBucket:
        return False


# ---------------------------------------------------------------- seeding


def phase(label: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    print(f"  {label} ...", flush=True)
    result = action()
    print(f"  {label}: {time.perf_counter() - started:.0f} s", flush=True)
    return result


def seed(bench: Bench) -> None:
    """Every source of the day, as the mix says."""
    from unembargo.devstack import rucio_server
    from unembargo.devstack.butler_repos import ensure_repos
    from unembargo.devstack.seed import plan_exposure

    settings = bench.settings
    print(f"seeding {bench.exposures} exposures x {bench.objects} objects (tag {bench.tag})")
    settings.dest_root.mkdir(parents=True, exist_ok=True)
    ensure_repos(settings)
    rucio_server.ensure_catalog(settings)
    plans = {seq: plan_exposure(DAY_OBS, seq) for seq in range(1, bench.exposures + 1)}
    fates = {seq: fate(seq, bench.exposures) for seq in plans}
    phase("S3 objects", lambda: seed_s3(settings, list(plans), bench.objects))
    tracts = phase("butler records and datasets", lambda: seed_butlers(settings, plans, fates))
    sizes = phase("destination files", lambda: seed_destination(settings, fates))
    phase("Rucio files, datasets, metadata", lambda: seed_rucio(settings, fates, tracts, sizes))
    phase("Temporal workflows", lambda: asyncio.run(seed_temporal(settings, fates)))


def seed_s3(settings: Settings, seqs: list[int], objects: int) -> None:
    """``objects`` tiny objects per exposure folder, named like the summit's files."""
    from unembargo.devstack import lsstcam
    from unembargo.devstack.butler_repos import s3_client

    client = s3_client(settings, pool=UPLOAD_THREADS)
    detectors = [d.full_name for d in lsstcam.DETECTORS][:objects]
    prefix = settings.s3_prefix
    folders = {seq: names.exposure_prefix(prefix, INSTRUMENT, DAY_OBS, obs_id(seq)) for seq in seqs}
    keys = [f"{folders[seq]}{obs_id(seq)}_{det}.fits" for seq in seqs for det in detectors]

    def put(key: str) -> None:
        client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"SIMPLE  =  T  tiny")

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for done, _ in enumerate(pool.map(put, keys), start=1):
            if done % 20500 == 0:
                print(f"    {done}/{len(keys)} objects", flush=True)


def seed_butlers(
    settings: Settings, plans: dict[int, Any], fates: dict[int, str]
) -> dict[int, tuple[int, ...]]:
    """Records (exposures and their visits, with regions) and raws: all in the embargo
    butler; in the main butler for the exposures whose ingest is done. Returns tracts."""
    from lsst.daf.butler import Butler, DataCoordinate

    from unembargo.devstack import lsstcam, skymap
    from unembargo.devstack.butler_repos import RAW_RUN, raw_dataset_types
    from unembargo.devstack.seed import exposure_records

    ingested = [seq for seq, f in fates.items() if f in ("unembargoed", "half-done", "running")]
    tracts = {seq: skymap.overlapping_tracts(p.region()) if p.region() else () for seq, p in plans.items()}
    for repo, seqs in ((settings.embargo_butler, list(plans)), (settings.main_butler, ingested)):
        with Butler.from_config(repo, writeable=True) as butler:
            records: dict[str, list[dict[str, Any]]] = {}
            for seq in seqs:
                for element, rows in exposure_records(plans[seq], []).items():
                    records.setdefault(element, []).extend(rows)
            for element, rows in records.items():
                if rows:
                    butler.registry.insertDimensionData(element, *rows, skip_existing=True)
            raw, _ = raw_dataset_types(butler)
            butler.collections.register(RAW_RUN)
            data_ids = [
                DataCoordinate.standardize(
                    instrument=INSTRUMENT,
                    detector=d.id,
                    exposure=plans[seq].exposure_id,
                    universe=butler.dimensions,
                )
                for seq in seqs
                for d in lsstcam.DETECTORS
            ]
            butler.registry.insertDatasets(raw, data_ids, RAW_RUN)
    return tracts


def seed_destination(settings: Settings, fates: dict[int, str]) -> dict[str, tuple[int, str, str]]:
    """Zip and yaml of every exposure past its zip and export steps; orphan zips. Returns checksums."""
    folder = settings.dest_root / names.day_relpath(INSTRUMENT, DAY_OBS)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[int, str, str]] = {}
    n = len(fates)
    wanted = [(seq, kind) for seq, f in fates.items() if f in ("unembargoed", "half-done", "running")
              for kind in ("zip", "yaml")]  # fmt: skip
    wanted += [(seq, "zip") for seq, f in fates.items() if f == "failed"]
    wanted += [(seq, "zip") for seq in range(n + 1, n + 1 + ORPHANS)]
    for seq, kind in wanted:
        relpath_of = names.zip_relpath if kind == "zip" else names.yaml_relpath
        relpath = relpath_of(INSTRUMENT, DAY_OBS, obs_id(seq))
        data = f"{kind} of {obs_id(seq)}\n".encode() * 8
        (settings.dest_root / relpath).write_bytes(data)
        written[relpath] = (len(data), hashlib.md5(data).hexdigest(), f"{zlib.adler32(data):08x}")
    return written


def seed_rucio(
    settings: Settings,
    fates: dict[int, str],
    tracts: dict[int, tuple[int, ...]],
    files: dict[str, tuple[int, str, str]],
) -> None:
    """Files registered and attached to their Tract/NoTract and Obs datasets; Obs closed and tagged."""
    from unembargo.adapters.rucio_client import connect

    client = connect(settings)
    scope = settings.rucio_scope
    registered = [seq for seq, f in fates.items() if f in ("unembargoed", "half-done")]
    mine = {seq: [names.zip_relpath(INSTRUMENT, DAY_OBS, obs_id(seq)),
                  names.yaml_relpath(INSTRUMENT, DAY_OBS, obs_id(seq))] for seq in registered}  # fmt: skip
    replicas = [{"scope": scope, "name": name, "bytes": files[name][0], "md5": files[name][1],
                 "adler32": files[name][2]} for names_ in mine.values() for name in names_]  # fmt: skip
    for chunk in chunks(replicas, 1000):
        client.add_replicas(settings.rucio_rse, chunk)
    members: dict[str, list[str]] = {}
    for seq, pair in mine.items():
        for dataset in names.exposure_datasets(INSTRUMENT, DAY_OBS, obs_id(seq), tracts[seq]):
            members.setdefault(dataset, []).extend(pair)
    for chunk in chunks(sorted(members), 500):
        client.add_dids([{"scope": scope, "name": name, "type": "DATASET"} for name in chunk])
    attach = [{"scope": scope, "name": d, "dids": [{"scope": scope, "name": f} for f in part]}
              for d, fs in members.items() for part in chunks(fs, 500)]  # fmt: skip
    for chunk in batches(attach, lambda a: len(a["dids"]), 2000):
        client.add_files_to_datasets(chunk, ignore_duplicate=True)
    obs = [names.obs_dataset(INSTRUMENT, DAY_OBS, obs_id(seq)) for seq in registered]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda part: close_all(settings, part), chunks(obs, 50)))
    done = [seq for seq in registered if fates[seq] == "unembargoed"]
    tagged = [names.obs_dataset(INSTRUMENT, DAY_OBS, obs_id(seq)) for seq in done]
    for chunk in chunks(tagged, 500):
        client.set_dids_metadata_bulk(
            [{"scope": scope, "name": name, "meta": {names.BACKUP_KEY: names.BACKUP_VALUE}} for name in chunk]
        )


def close_all(settings: Settings, datasets: list[str]) -> None:
    from unembargo.adapters.rucio_client import connect

    client = connect(settings)
    for name in datasets:
        client.close(settings.rucio_scope, name)


def chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def batches(items: Iterable[Any], weight: Callable[[Any], int], limit: int) -> Iterable[list[Any]]:
    """Consecutive groups of ``items`` whose weights add up to at most ``limit`` (or one item)."""
    group: list[Any] = []
    total = 0
    for item in items:
        if group and total + weight(item) > limit:
            yield group
            group, total = [], 0
        group.append(item)
        total += weight(item)
    if group:
        yield group


@workflow.defn(name=names.EXPOSURE_WORKFLOW, sandboxed=False)
class StubExposure:
    """Stands in for the exposure workflow: ends as the mix says, in milliseconds."""

    @workflow.run
    async def run(self, inp: ExposureInput) -> None:
        outcome = FATE_BY_REMAINDER.get(int(inp.exposure.obs_id[-6:]) % 100, "unembargoed")
        if outcome == "failed":
            workflow.upsert_search_attributes([SA_STEP.value_set("zip")])
            raise ApplicationError(
                f"step zip: {inp.exposure.obs_id}.zip exists but does not match the bucket (benchmark stub)",
                type="DestinationConflict",
                non_retryable=True,
            )
        if outcome == "running":
            # Nobody serves this queue: the activity stays pending, the run stays running.
            workflow.upsert_search_attributes([SA_STEP.value_set("register")])
            await workflow.execute_activity(
                STEPS[Step.REGISTER].activity, inp, task_queue=inp.queues[Step.REGISTER],
                start_to_close_timeout=timedelta(minutes=10),
            )  # fmt: skip
        workflow.upsert_search_attributes([SA_STEP.value_set("done")])


async def seed_temporal(settings: Settings, fates: dict[int, str]) -> None:
    """One stub run per exposure that has a workflow: completed, failed or running."""
    from unembargo.devstack import temporal
    from unembargo.engine.starter import start_exposures

    unscoped = await Client.connect(settings.temporal_address)
    await temporal.ensure_namespace(unscoped, settings.temporal_namespace)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    nowhere = names.location_queue(f"nobody-{settings.rucio_scope}")
    queues: StepQueues = dict.fromkeys(STEPS, nowhere)
    started = [seq for seq, f in fates.items() if f in ("unembargoed", "half-done", "running", "failed")]
    exposures = [Exposure(INSTRUMENT, DAY_OBS, obs_id(s), DAY_OBS * 100000 + s) for s in started]
    async with Worker(client, task_queue=settings.workflow_task_queue, workflows=[StubExposure]):
        await start_exposures(client, settings.workflow_task_queue, exposures, queues)
        for seq in started:
            await _settled(client, obs_id(seq), fates[seq])


async def _settled(client: Client, obs: str, outcome: str) -> None:
    """Wait for a stub run to end (or, for a running one, to schedule its activity)."""
    handle = client.get_workflow_handle(names.workflow_id(INSTRUMENT, obs))
    if outcome != "running":
        try:
            await handle.result()
        except WorkflowFailureError:
            pass
        return
    deadline = time.monotonic() + 120
    while not (await handle.describe()).raw_description.pending_activities:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{obs}: its stub run never scheduled its activity")
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------- measuring


def run_cli(bench: Bench) -> dict[str, Any]:
    """``unembargo reconcile --day D --json`` in a child process: its report and its wall time."""
    load = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", "reconcile", "--day", str(DAY_OBS), "--json"],
        env={**os.environ, **settings_overrides(bench.settings)},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    wall = time.perf_counter() - started
    if out.returncode not in (0, 1):
        raise RuntimeError(f"reconcile exited {out.returncode}: {out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    return {"process_wall_s": round(wall, 3), "seconds": report["seconds"], "counts": report["counts"],
            "load_average_1m": load}  # fmt: skip


def run_sequential(bench: Bench) -> dict[str, Any]:
    """The library with the sources asked one after another: each source's own time."""
    from unembargo.client.reconcile import ReconcileRequest, reconcile_day

    request = ReconcileRequest(day_obs=DAY_OBS, instrument=INSTRUMENT, sequential=True)
    load = round(os.getloadavg()[0], 2)
    rec = asyncio.run(reconcile_day(bench.settings, request))
    seconds = {k: round(v, 3) for k, v in rec.seconds.items()}
    return {"seconds": seconds, "counts": rec.counts, "load_average_1m": load}


def measure(bench: Bench, repeat: int) -> dict[str, Any]:
    """``repeat`` runs of the command, then one of the library with the sources in turn."""

    use_loopback_credentials(bench.settings.s3_endpoint_url)
    runs = {f"cli_{i}": run_cli(bench) for i in range(1, repeat + 1)}
    runs["sequential"] = run_sequential(bench)
    expected = expected_counts(bench.exposures)
    for name, run in runs.items():
        if run["counts"] != expected:
            raise AssertionError(f"{name}: counts {run['counts']} differ from the seeded mix {expected}")
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "day_obs": DAY_OBS,
        "exposures": bench.exposures,
        "objects_per_exposure": bench.objects,
        "expected_counts": expected,
        "runs": runs,
    }


# ---------------------------------------------------------------- reporting


def table(result: dict[str, Any]) -> str:
    """A Markdown table: seconds per source for each run, and how busy the machine was."""
    cols = ["s3", "butler", "destination", "rucio", "temporal", "total"]
    lines = [
        "| run | " + " | ".join(cols) + " | process wall | load (1 min) |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for name, run in result["runs"].items():
        label = "library, one source after another"
        if name != "sequential":
            label = f"CLI #{name[4:]}, sources at once"
        cells = [f"{run['seconds'][c]:.2f}" for c in cols]
        wall = f"{run['process_wall_s']:.2f}" if "process_wall_s" in run else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {wall} | {run['load_average_1m']} |")
    return "\n".join(lines)


def update_docs(result: dict[str, Any]) -> None:
    """Replace the text between the measured markers of docs/reconcile.md."""
    counts = ", ".join(f"{n} {k}" for k, n in result["expected_counts"].items())
    machine = result["machine"]
    body = (
        f"Measured {result['measured_at']} by `benchmarks/reconcile.py` on {machine['cpus']} CPUs "
        f"(Python {machine['python']}), against the local stack: one day of {result['exposures']} exposures "
        f"x {result['objects_per_exposure']} objects ({counts}). Seconds:\n\n"
        f"{table(result)}\n\n"
        "With the sources asked at once, each source's time overlaps the others' (and includes waiting for "
        "the CPU), so `total` is close to the slowest source, not the sum. `process wall` adds the "
        "command's start-up (imports, connections). The load column is the machine's 1-minute load "
        "average when the run began: other work on the same 2 CPUs slows every source."
    )
    replace_measured(DOCS, body)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=EXPOSURES)
    parser.add_argument("--objects", type=int, default=OBJECTS, help="objects per exposure folder")
    parser.add_argument("--fresh", action="store_true", help="seed a new day even if one is there")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the command to time")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/reconcile.md")
    args = parser.parse_args(argv)
    from unembargo.devstack import stack

    base = Settings()
    use_loopback_credentials(base.s3_endpoint_url)
    down = [row.name for row in stack.status(base) if not row.healthy and row.name != "worker"]
    if down:
        raise SystemExit(f"the local stack is not up ({', '.join(down)}): run `unembargo dev up` first")
    bench = find_or_seed(base, args.exposures, args.objects, args.fresh)
    result = measure(bench, args.repeat)
    print(table(result))
    print(f"results: {write_results('reconcile', result).relative_to(REPO)}")
    if not args.no_docs:
        update_docs(result)
        print(f"updated {DOCS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
