"""Benchmark: exposures unembargoed end to end, unembargo against the serial cron loop.

    .venv/bin/python benchmarks/pipeline.py                  # both shapes, all three variants
    .venv/bin/python benchmarks/pipeline.py --small 2 --large 0 --no-docs   # a quick look
    .venv/bin/python benchmarks/pipeline.py --stop-stack     # stop the benchmark's own stack

By default it brings up a stack of its own under ``.dev/bench`` (moto S3 on :9110,
Temporal on :7333 with its UI on :8333, Rucio on :8865, the PostgreSQL at
127.0.0.1:5432 reused), so nothing else that starts or stops a stack disturbs it;
it is left running for the next run (the Rucio venv takes a minute to install).
``--stack dev`` uses the ``unembargo dev up`` stack instead (default ports, ``.dev/``).

For each data shape (``--small`` exposures of 205 x 64 KiB raws, ``--large`` of
205 x ``--large-mib`` MiB) it seeds the exposures once into a bucket and embargo
butler of their own, then unembargoes all of them three times, each variant with a
main butler, destination, Rucio scope and RSE, Temporal namespace, queues and
database of its own (so nothing is already done):

- ``serial``: benchmarks/serial_baseline.py in a child process, one exposure after another;
- ``1 worker`` / ``2 workers``: real ``unembargo worker`` processes and the real
  Temporal server, every exposure started at once (as ``unembargo start`` does).

Per variant: exposures per minute (first start to last end), median and p95
seconds per exposure, seconds per step and orchestration overhead (both from the
workflow histories' event times), peak RSS of each process (VmHWM), and the zip
step's MB/s; per shape, the plain-copy MB/s of the same objects to the same disk.
Results go to ``benchmarks/results/pipeline-<UTC time>.json`` and between the
markers of docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client

from report import REPO, replace_measured, write_results
from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.models import names
from unembargo.models.exposure import STEP_OF_ACTIVITY, STEPS, Exposure
from unembargo.models.settings import Settings

DOCS = REPO / "docs" / "performance.md"

INSTRUMENT = "LSSTCam"
DAY_OBS = 20250601
KIB = 1024
MIB = 1024 * 1024
# The benchmark's own stack: ports clear of `unembargo dev up` and of the test stack.
BENCH_STATE = REPO / ".dev" / "bench"
BENCH_PORTS = {"s3": 9110, "temporal": 7333, "ui": 8333, "rucio": 8865}
VARIANTS = ("serial", "1 worker", "2 workers")
BENCH_SERVICES = ("postgres", "s3", "temporal", "rucio")
# The zip step's parallel downloads (activities/zip.py WORKERS), used for the plain copy too.
COPY_THREADS = 12
# Exposures the plain copy reads (each folder once).
COPY_SAMPLES = 2


# ---------------------------------------------------------------- settings of its own


def stack_settings(which: str) -> Settings:
    """The services the benchmark runs against: its own stack, or ``unembargo dev up``'s."""
    if which == "dev":
        return Settings()
    st = BENCH_STATE
    return Settings(
        state_dir=st,
        temporal_address=f"127.0.0.1:{BENCH_PORTS['temporal']}",
        temporal_ui_url=f"http://127.0.0.1:{BENCH_PORTS['ui']}",
        s3_endpoint_url=f"http://127.0.0.1:{BENCH_PORTS['s3']}",
        rucio_host=f"http://127.0.0.1:{BENCH_PORTS['rucio']}",
        rucio_password_file=st / "rucio" / "password",
        dest_root=st / "dest" / "raw",
        database_url=SecretStr(f"sqlite:///{st / 'unembargo.db'}"),
    )


def bring_up(base: Settings, which: str) -> None:
    """Start what is not running (own stack), or insist that ``dev up`` ran."""
    from unembargo.devstack import stack

    use_loopback_credentials(base.s3_endpoint_url)
    os.environ["S3_ENDPOINT_URL"] = str(base.s3_endpoint_url)
    # What the exposure flow needs; the stack's other flows' services are not measured here.
    services = [s for s in stack.SERVICES if s.name in BENCH_SERVICES]
    if which == "dev":
        down = [s.name for s in services if not s.health(base)[0]]
        if down:
            raise SystemExit(f"the local stack is not up ({', '.join(down)}): run `unembargo dev up` first")
        return
    base.state_dir.mkdir(parents=True, exist_ok=True)
    for service in services:
        print(f"  {service.name}: {service.ensure(base)}", flush=True)


def source_settings(base: Settings, root: Path, tag: str) -> Settings:
    """A bucket and embargo butler of the shape's own."""
    return base.model_copy(
        update={
            "s3_bucket": f"bench-{tag}",
            "embargo_butler": str(root / "butler" / "embargo"),
            "main_butler": str(root / "butler" / "unused-main"),
        }
    )


def variant_settings(source: Settings, root: Path, tag: str) -> Settings:
    """``source`` with a main butler, destination, scope, RSE, namespace, queue and database of its own."""
    scope = f"b{tag}"
    return source.model_copy(
        update={
            "main_butler": str(root / "main"),
            "dest_root": root / "dest" / scope,
            "rucio_scope": scope,
            "rucio_rse": f"BENCH_{tag.upper()}",
            "temporal_namespace": f"bench-{tag}",
            "database_url": SecretStr(f"sqlite:///{root / 'unembargo.db'}"),
            "workflow_task_queue": f"bench-{tag}-workflows",
            # Spans are not what is measured here (production sends them over OTLP).
            "otel_exporter": "none",
        }
    )


def child_env(settings: Settings) -> dict[str, str]:
    """Environment of a child process that sees ``settings``."""
    from unembargo.devstack.s3 import LOCAL_ENV

    return {
        **os.environ,
        **LOCAL_ENV,
        "S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
        **settings.environment(),
    }


def prepare_variant(settings: Settings) -> list[str]:
    """Main butler, Rucio scope and RSE, namespace and the two locations; their names."""
    from sqlmodel import Session

    from unembargo.devstack import rucio_server, temporal
    from unembargo.devstack.butler_repos import ensure_repos
    from unembargo.models.locations import DataLocation
    from unembargo.models.tables import connect, upsert_location

    settings.dest_root.mkdir(parents=True, exist_ok=True)
    ensure_repos(settings)
    rucio_server.ensure_catalog(settings)

    async def namespace() -> None:
        await temporal.ensure_namespace(
            await Client.connect(settings.temporal_address), settings.temporal_namespace
        )

    asyncio.run(namespace())
    tag = settings.rucio_scope
    rows = [
        DataLocation(
            name=f"dest-{tag}",
            site="bench",
            type="long_term_archive",
            storage="disk",
            path=str(settings.dest_root),
            operations="unembargo",
        ),
        DataLocation(
            name=f"rucio-{tag}",
            site="bench",
            type="catalogue",
            storage="service",
            endpoint=settings.rucio_host,
        ),
    ]
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for row in rows:
            upsert_location(session, row)
    return [row.name for row in rows]


# ---------------------------------------------------------------- seeding


def seed(source: Settings, count: int, file_size: int) -> list[Exposure]:
    """``count`` complete science exposures of 205 raws of ``file_size`` bytes (plus sidecars)."""
    from lsst.daf.butler import Butler

    from unembargo.devstack.butler_repos import ensure_repos, s3_client
    from unembargo.devstack.seed import seed_exposure

    ensure_repos(source)
    client = s3_client(source)
    exposures = []
    with Butler.from_config(source.embargo_butler, writeable=True) as butler:
        for seq in range(1, count + 1):
            done = seed_exposure(source, DAY_OBS, seq, file_size=file_size, butler=butler, s3=client)
            exposures.append(Exposure(INSTRUMENT, DAY_OBS, done.obs_id, done.exposure_id))
    return exposures


def drop_bucket(source: Settings) -> None:
    """Delete the shape's objects: moto holds every object in memory."""
    from unembargo.devstack.butler_repos import s3_client

    client = s3_client(source)
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=source.s3_bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=source.s3_bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=source.s3_bucket)


# ---------------------------------------------------------------- the I/O limit


def plain_copy(source: Settings, exposures: Sequence[Exposure], folder: Path) -> dict[str, Any]:
    """Every object of a few exposure folders read from S3 (COPY_THREADS at once, as the
    zip step does) and written in order to one file on the destination disk, fsynced:
    the bytes the zip step moves, with nothing else done to them."""
    from unembargo.activities.context import Resources
    from unembargo.adapters.s3 import list_folder

    s3 = Resources(source).s3
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    seconds = 0.0
    for exp in exposures[:COPY_SAMPLES]:
        prefix = names.exposure_prefix(source.s3_prefix, exp.instrument, exp.day_obs, exp.obs_id)
        target = folder / f"{exp.obs_id}.copy"
        started = time.perf_counter()
        objects = list_folder(s3, source.s3_bucket, prefix)

        def get(key: str) -> bytes:
            with s3.get_object(Bucket=source.s3_bucket, Key=key)["Body"] as body:
                return body.read()

        with open(target, "wb") as out, ThreadPoolExecutor(COPY_THREADS) as pool:
            for data in pool.map(get, [o.key for o in objects]):
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        seconds += time.perf_counter() - started
        total += target.stat().st_size
        target.unlink()
    return {"bytes": total, "seconds": round(seconds, 3), "mb_per_s": round(total / MIB / seconds, 1)}


def file_copy(path: Path) -> dict[str, Any]:
    """``shutil.copyfile`` of one zip beside itself, fsynced: the disk alone."""
    target = path.with_name(f".{path.name}.copy")
    started = time.perf_counter()
    shutil.copyfile(path, target)
    with open(target, "rb") as f:
        os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    size = target.stat().st_size
    target.unlink()
    return {"bytes": size, "seconds": round(seconds, 3), "mb_per_s": round(size / MIB / seconds, 1)}


# ---------------------------------------------------------------- variants


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process: its peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process and its live descendants (gunicorn's workers)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # After the command: state, ppid, ..., utime (field 14) and stime (15) of stat(5).
        parent[int(stat.parent.name)] = int(fields[1])
        ticks[int(stat.parent.name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, pp in parent.items() if pp == current and p not in tree]
        tree.update(children)
        frontier += children
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def service_cpu(base: Settings) -> dict[str, float]:
    """CPU seconds so far of the stack's services this stack started (PostgreSQL is shared: not counted)."""
    from unembargo.devstack import procs

    found = {}
    for name in ("s3", "temporal", "rucio"):
        rec = procs.recorded(base.state_dir, name)
        if rec is not None:
            found[name] = cpu_seconds(rec.pid)
    return found


def zip_sizes(settings: Settings, exposures: Sequence[Exposure]) -> dict[str, int]:
    """Bytes of each exposure's installed zip, by obs_id."""
    return {
        e.obs_id: (settings.dest_root / names.zip_relpath(e.instrument, e.day_obs, e.obs_id)).stat().st_size
        for e in exposures
    }


def run_serial(settings: Settings, exposures: Sequence[Exposure]) -> dict[str, Any]:
    """benchmarks/serial_baseline.py over every exposure, in a child process."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(
            [
                {
                    "instrument": e.instrument,
                    "day_obs": e.day_obs,
                    "obs_id": e.obs_id,
                    "exposure_id": e.exposure_id,
                }
                for e in exposures
            ],
            f,
        )
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "serial_baseline.py"), f.name],
        env=child_env(settings),
        stdout=out,
        stderr=err,
        cwd=REPO,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    os.unlink(f.name)
    err.seek(0)
    if proc.returncode != 0:
        raise RuntimeError(f"the serial baseline exited {proc.returncode}: {err.read().decode()[-3000:]}")
    out.seek(0)
    report = json.loads(out.read())
    rows = [
        {
            "obs_id": r["obs_id"],
            "start": r["start"],
            "end": r["end"],
            "steps": r["steps"],
            "in_activities": sum(r["steps"].values()),
            "queued": 0.0,
            "zip_span": [r["start"], r["start"] + r["steps"].get("zip", 0.0)],
        }
        for r in report["exposures"]
    ]
    return {
        "rows": rows,
        "startup_s": round(report["clients_ready"] - report["process_start"], 2),
        "client_cpu_s": round(report["cpu_end"] - report["cpu_ready"], 2),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": [round(usage.ru_maxrss / 1024, 1)],
    }


@dataclass
class WorkerSet:
    """``count`` real worker processes serving a variant's queues."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    @classmethod
    def start(cls, settings: Settings, locations: list[str], count: int) -> WorkerSet:
        argv = [sys.executable, "-m", "unembargo.cli.app", "worker"]
        for name in locations:
            argv += ["--location", name]
        procs, logs = [], []
        for _ in range(count):
            fd, name = tempfile.mkstemp(prefix="bench-worker-", suffix=".log")
            os.close(fd)
            log = Path(name)
            procs.append(
                subprocess.Popen(
                    argv,
                    env=child_env(settings),
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=REPO,
                )
            )
            logs.append(log)
        return cls(procs, logs)

    def peak_rss_mb(self) -> list[float]:
        return [peak_rss_mb(p.pid) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for log in self.logs:
            log.unlink(missing_ok=True)


async def polled_by(client: Client, settings: Settings, locations: list[str], count: int) -> bool:
    """Every queue of the variant has ``count`` pollers."""
    from sqlmodel import Session
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    from unembargo.models.locations import location_queues
    from unembargo.models.tables import connect

    with Session(connect(settings.database_url.get_secret_value())) as session:
        names_ = [q for n in locations for q in location_queues(session, n)]
    queues = [(q, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY) for q in names_]
    queues.append((settings.workflow_task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    for queue, kind in queues:
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
            )
        )
        if len({p.identity for p in resp.pollers}) < count:
            return False
    return True


async def run_workers(
    settings: Settings, locations: list[str], exposures: Sequence[Exposure], count: int
) -> dict[str, Any]:
    """Start every exposure at once with ``count`` workers serving; per-exposure timings."""
    from sqlmodel import Session

    from unembargo.engine.starter import start_exposures
    from unembargo.models.tables import connect, step_queues

    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    workers = WorkerSet.start(settings, locations, count)
    try:
        deadline = time.monotonic() + 120
        while not await polled_by(client, settings, locations, count):
            if time.monotonic() > deadline or any(p.poll() is not None for p in workers.procs):
                logs = "\n".join(log.read_text(errors="replace")[-2000:] for log in workers.logs)
                raise RuntimeError(f"the workers never polled their queues:\n{logs}")
            await asyncio.sleep(0.5)
        cpu_before = sum(cpu_seconds(p.pid) for p in workers.procs)
        outcomes = await start_exposures(client, settings.workflow_task_queue, exposures, queues)
        not_started = [o for o in outcomes if o.outcome != "started"]
        if not_started:
            raise RuntimeError(f"not fresh: {not_started}")
        for o in outcomes:
            await client.get_workflow_handle(o.workflow_id).result()
        rss = workers.peak_rss_mb()
        cpu = sum(cpu_seconds(p.pid) for p in workers.procs) - cpu_before
    finally:
        workers.stop()
    rows = [await history_timings(client, o.workflow_id, o.exposure.obs_id) for o in outcomes]
    return {"rows": rows, "peak_rss_mb": rss, "client_cpu_s": round(cpu, 2)}


async def history_timings(client: Client, workflow_id: str, obs_id: str) -> dict[str, Any]:
    """From the workflow's history: its start and end, each step's time inside its activity
    (started to completed) and its time queued (scheduled to started)."""
    from temporalio.api.enums.v1 import EventType

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    kind: dict[int, str] = {}
    scheduled: dict[int, float] = {}
    started: dict[int, float] = {}
    steps: dict[str, float] = {}
    zip_span = [0.0, 0.0]
    queued = 0.0
    begin = end = 0.0
    for event in history.events:
        t = event.event_time.ToDatetime(tzinfo=UTC).timestamp()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            begin = t
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            end = t
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            kind[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = t
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            sid = event.activity_task_started_event_attributes.scheduled_event_id
            started[sid] = t
            queued += t - scheduled[sid]
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sid = event.activity_task_completed_event_attributes.scheduled_event_id
            step = STEP_OF_ACTIVITY[kind[sid]]
            steps[step] = steps.get(step, 0.0) + t - started[sid]
            if step == "zip":
                zip_span = [started[sid], t]
    return {
        "obs_id": obs_id,
        "start": begin,
        "end": end,
        "steps": steps,
        "in_activities": sum(steps.values()),
        "queued": queued,
        "zip_span": zip_span,
    }


# ---------------------------------------------------------------- summaries


def p95(values: Sequence[float]) -> float:
    """The 95th percentile, nearest rank (the largest value for fewer than 20)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def zip_spans(rows: Sequence[dict[str, Any]]) -> float:
    """Seconds during which at least one zip step ran (zip is each exposure's first step)."""
    spans = sorted(tuple(r["zip_span"]) for r in rows)
    total, cur_start, cur_end = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_end:
            total += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    return total + cur_end - cur_start


def summarize(raw: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    """A variant's figures from its per-exposure rows and zip sizes."""
    rows = raw["rows"]
    wall = [r["end"] - r["start"] for r in rows]
    span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    overhead = [(r["end"] - r["start"] - r["in_activities"]) for r in rows]
    zip_mb = sum(sizes.values()) / MIB
    return {
        "exposures": len(rows),
        "span_s": round(span, 2),
        "exposures_per_min": round(len(rows) / span * 60, 2),
        "median_s": round(statistics.median(wall), 2),
        "p95_s": round(p95(wall), 2),
        "step_median_s": {
            s: round(statistics.median(r["steps"].get(s, 0.0) for r in rows), 3) for s in STEPS
        },
        "overhead_median_s": round(statistics.median(overhead), 3),
        "overhead_median_pct": round(
            100 * statistics.median(o / w for o, w in zip(overhead, wall, strict=True)), 2
        ),
        "queued_median_s": round(statistics.median(r["queued"] for r in rows), 3),
        "zip_mb_per_s_median": round(
            statistics.median(sizes[r["obs_id"]] / MIB / r["steps"]["zip"] for r in rows), 1
        ),
        "zip_mb_per_s_aggregate": round(zip_mb / zip_spans(rows), 1),
        "zip_mib": round(zip_mb / len(rows), 1),
        "peak_rss_mb": raw["peak_rss_mb"],
    }


# ---------------------------------------------------------------- one shape


def run_shape(
    base: Settings, label: str, count: int, file_size: int, variants: Sequence[str]
) -> dict[str, Any]:
    """Seed one shape's exposures once, then run each variant over them with its own names."""
    tag = uuid.uuid4().hex[:8]
    root = base.state_dir.resolve() / "bench" / "pipeline" / tag
    source = source_settings(base, root, tag)
    print(f"{label}: seeding {count} exposures x 205 raws of {file_size // KIB} KiB (tag {tag})", flush=True)
    started = time.perf_counter()
    exposures = seed(source, count, file_size)
    seeded_s = round(time.perf_counter() - started, 1)
    print(f"  seeded in {seeded_s} s", flush=True)
    shape: dict[str, Any] = {
        "label": label,
        "exposures": count,
        "file_kib": file_size // KIB,
        "seed_s": seeded_s,
        "variants": {},
    }
    try:
        for i, variant in enumerate(variants):
            vsettings = variant_settings(source, root / f"v{i}", f"{tag}{i}")
            locations = prepare_variant(vsettings)
            load = os.getloadavg()
            print(f"  {variant}: running (load {load[0]:.2f})", flush=True)
            services_before = service_cpu(base)
            if variant == "serial":
                raw = run_serial(vsettings, exposures)
            else:
                raw = asyncio.run(run_workers(vsettings, locations, exposures, int(variant.split()[0])))
            services = {k: v - services_before.get(k, 0.0) for k, v in service_cpu(base).items()}
            sizes = zip_sizes(vsettings, exposures)
            result = summarize(raw, sizes)
            result["load_average"] = {
                "before": [round(x, 2) for x in load],
                "after": [round(x, 2) for x in os.getloadavg()],
            }
            cpu = {"unembargo" if variant != "serial" else "baseline": raw["client_cpu_s"], **services}
            result["cpu_s_per_exposure"] = {k: round(v / count, 2) for k, v in cpu.items()}
            if "startup_s" in raw:
                result["startup_s"] = raw["startup_s"]
            result["per_exposure"] = raw["rows"]
            shape["variants"][variant] = result
            print(
                f"  {variant}: {result['exposures_per_min']} exposures/min, median {result['median_s']} s, "
                f"zip {result['zip_mb_per_s_aggregate']} MB/s, RSS {result['peak_rss_mb']}",
                flush=True,
            )
            if not shape.get("plain_copy"):
                zips = sorted(vsettings.dest_root.rglob("*.zip"))
                shape["plain_copy"] = plain_copy(source, exposures, vsettings.dest_root / "copy")
                shape["file_copy"] = file_copy(zips[0])
                print(
                    f"  plain copy {shape['plain_copy']['mb_per_s']} MB/s, "
                    f"file copy {shape['file_copy']['mb_per_s']} MB/s",
                    flush=True,
                )
            # The zips are what the disk holds; the next variant writes its own.
            for path in vsettings.dest_root.rglob("*.zip"):
                path.unlink()
    finally:
        drop_bucket(source)
    return shape


# ---------------------------------------------------------------- reporting


def table(result: dict[str, Any]) -> str:
    """One Markdown table: a row per shape and variant."""
    lines = [
        "| shape | variant | exp/min | vs serial | median s | p95 s | zip | export | ingest | register "
        "| tag | overhead s (%) | queued s | zip MB/s (each, all) | plain copy MB/s | peak RSS MB | load |",
        "|---|---|" + "---:|" * 15,
    ]
    for shape in result["shapes"]:
        serial = shape["variants"].get("serial")
        for name, v in shape["variants"].items():
            ratio = f"{v['exposures_per_min'] / serial['exposures_per_min']:.2f}x" if serial else "-"
            steps = " | ".join(f"{v['step_median_s'][s]:.2f}" for s in STEPS)
            rss = ", ".join(f"{x:.0f}" for x in v["peak_rss_mb"])
            lines.append(
                f"| {shape['exposures']} x 205 x {shape['file_kib']} KiB | {name} "
                f"| {v['exposures_per_min']:.1f} | {ratio} | {v['median_s']:.1f} | {v['p95_s']:.1f} "
                f"| {steps} "
                f"| {v['overhead_median_s']:.2f} ({v['overhead_median_pct']:.1f}%) "
                f"| {v['queued_median_s']:.2f} "
                f"| {v['zip_mb_per_s_median']:.0f}, {v['zip_mb_per_s_aggregate']:.0f} "
                f"| {shape['plain_copy']['mb_per_s']:.0f} | {rss} | {v['load_average']['before'][0]:.1f} |"
            )
    return "\n".join(lines)


def update_docs(result: dict[str, Any]) -> None:
    """Replace the text between the measured markers of docs/performance.md."""
    machine = result["machine"]
    copies = "; ".join(
        f"{s['file_kib']} KiB: plain copy {s['plain_copy']['mb_per_s']:.0f} MB/s, "
        f"file copy {s['file_copy']['mb_per_s']:.0f} MB/s"
        for s in result["shapes"]
    )
    body = (
        f"Measured {result['measured_at']} by `{' '.join(['benchmarks/pipeline.py', *result['argv']])}` on "
        f"{machine['cpus']} CPUs, {machine['memory_gib']} GiB (Python {machine['python']}, "
        f"{machine['system']}); load average (1, 5, 15 min) at the start {result['load_average']['start']}, "
        f"at the end {result['load_average']['end']}. Seconds are medians over the exposures.\n\n"
        f"{table(result)}\n\n"
        f"Copies of the same bytes to the same disk: {copies}."
    )
    replace_measured(DOCS, body)


def memory_gib() -> float:
    """The machine's memory, for the record."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10, help="exposures of 205 x 64 KiB (0: none)")
    parser.add_argument("--large", type=int, default=3, help="exposures of 205 x --large-mib MiB (0: none)")
    parser.add_argument("--large-mib", type=int, default=8, help="raw size of the large shape")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--stack",
        choices=("bench", "dev"),
        default="bench",
        help="the benchmark's own stack under .dev/bench, or `unembargo dev up`'s",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--stop-stack", action="store_true", help="stop the benchmark's own stack and exit")
    args = parser.parse_args(argv)
    base = stack_settings(args.stack)
    if args.stop_stack:
        from unembargo.devstack import stack

        print(stack.down(stack_settings("bench")))
        return
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    print(f"stack ({args.stack}):", flush=True)
    bring_up(base, args.stack)
    result: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": memory_gib(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
        "shapes": [],
    }
    shapes = [("small", args.small, 64 * KIB), ("large", args.large, args.large_mib * MIB)]
    for label, count, size in shapes:
        if count > 0:
            result["shapes"].append(run_shape(base, label, count, size, variants))
    result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(result))
    print(f"results: {write_results('pipeline', result).relative_to(REPO)}")
    if not args.no_docs:
        update_docs(result)
        print(f"updated {DOCS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
