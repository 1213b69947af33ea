"""Fault injection against a real, private stack: whatever fails, every exposure ends
unembargoed, each side effect done exactly once.

Faults: workers SIGKILLed at random instants while two workers serve the same
locations; S3 refusing connections, the Rucio server and PostgreSQL stopped, the
Temporal server stopped and restarted on its state file; the destination filesystem
full. Every outcome is read back from the systems themselves (tests/stack/verify.py, the
destination's inodes, the main butler, Rucio). The default variant is sized for CI;
``pytest tests/stack/test_faults.py -m slow -s`` runs the full-size one (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
from lsst.daf.butler import Butler
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

import fault_stack
from conftest import isolate
from fault_stack import FaultStack
from support import (
    REPO,
    WorkerProcess,
    add_locations,
    effects,
    fresh_day,
    location_names,
    poll_until,
    start_one,
)
from unembargo.adapters.rucio_client import connect as rucio_connect
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models import names
from unembargo.models.exposure import STEPS, Policy, Step
from unembargo.models.settings import Settings
from verify import check_unembargoed

# Short heartbeats so an activity of a killed worker is retried within seconds.
FAST = Policy(heartbeat_s=5)
# Small raws keep seeding and zipping quick; the zip still holds all 205 raws and sidecars.
FILE_SIZE = 16 * 1024
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Size:
    """How big one variant's runs are."""

    variant: str
    kill_exposures: int
    kills: int
    outage_exposures: int
    outage_s: float
    full_exposures: int
    timeout_s: float


CI = Size("ci", kill_exposures=4, kills=3, outage_exposures=1, outage_s=10, full_exposures=1, timeout_s=600)
FULL = Size("full", kill_exposures=30, kills=12, outage_exposures=8, outage_s=60, full_exposures=4,
            timeout_s=1800)  # fmt: skip


@dataclass
class Row:
    """One line of the results table: a fault, what ran and what came out."""

    fault: str
    variant: str
    exposures: int
    completed: int = 0
    failed: int = 0
    injected: int = 0
    max_attempt: int = 1
    retried_activities: int = 0
    worker_restarts: int = 0
    zips: int = 0
    ingested_datasets: int = 0
    replicas: int = 0
    attachments: int = 0
    ledger_rows: int = 0
    ledger_repeats: int = 0
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)


ROWS: list[Row] = []
# Days of the runs so far: each run has a day (a destination folder) of its own.
DAYS: set[int] = set()
# Every worker a test started, stopped when the test ends however it ends.
WORKERS: list[WorkerProcess] = []


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultStack]:
    """The private stack, up for this module only; this process's S3 endpoint restored after."""
    running = fault_stack.up()
    previous = fault_stack.use_endpoint(running.settings)
    try:
        yield running
    finally:
        fault_stack.down(running)
        os.environ.update(previous)
        _write_results()


@pytest.fixture
def own(fault: FaultStack, tmp_path: Path) -> Settings:
    """A bucket, repos, destination, scope, RSE, database and namespace of this test's own."""
    settings = isolate(fault.settings, tmp_path)
    add_locations(settings, "fault")
    return settings


class Run:
    """Exposures of one test, its workers, and what the destination showed while it ran."""

    def __init__(self, settings: Settings, client: Client, row: Row) -> None:
        self.settings = settings
        self.client = client
        self.row = row
        self.day = fresh_day()
        while self.day in DAYS:
            self.day = fresh_day()
        DAYS.add(self.day)
        self.seeded: list[SeededExposure] = []
        self.handles: list[WorkflowHandle[object, object]] = []
        self.workers: list[WorkerProcess] = []
        # First (inode, mtime) seen under each final name: a file installed twice would change it.
        self.first_seen: dict[Path, tuple[int, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def worker(self) -> WorkerProcess:
        env = {"S3_ENDPOINT_URL": str(self.settings.s3_endpoint_url)}
        proc = WorkerProcess(self.settings, location_names(self.settings), env)
        self.workers.append(proc)
        WORKERS.append(proc)
        return proc

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    async def start(self, count: int) -> list[WorkflowHandle[object, object]]:
        """Seed ``count`` more exposures of the run's day and start their workflows."""
        first = len(self.seeded) + 1
        batch = [
            seed_exposure(self.settings, self.day, seq, file_size=FILE_SIZE)
            for seq in range(first, first + count)
        ]
        self.seeded += batch
        handles = [await start_one(self.client, self.settings, s, FAST) for s in batch]
        self.handles += handles
        return handles

    def watch(self, workers: int = 2) -> None:
        """Keep ``workers`` workers alive (a supervisor would) and sample the destination."""
        for _ in range(workers):
            self.worker()
        self._tasks += [asyncio.create_task(self._supervise(workers)), asyncio.create_task(self._sample())]

    async def _supervise(self, wanted: int) -> None:
        while True:
            for _ in range(wanted - len(self.live_workers())):
                self.row.worker_restarts += 1
                self.worker()
            await asyncio.sleep(0.5)

    async def _sample(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.3)

    def sample(self) -> None:
        folder = self.settings.dest_root / "LSSTCam" / str(self.day)
        for seeded in self.seeded:
            for path in (folder / f"{seeded.obs_id}.zip", folder / f"{seeded.obs_id}_dimensions.yaml"):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                self.first_seen.setdefault(path, (st.st_ino, st.st_mtime_ns))

    async def finish(self, timeout: float) -> None:
        """Wait until every workflow has closed; then stop the workers."""
        try:
            await poll_until(self.all_closed, timeout=timeout, what="every workflow to close", interval=1)
        except AssertionError as err:
            raise AssertionError(f"{err}; still open: {await self._open_summary()}") from None
        for task in self._tasks:
            task.cancel()
        for worker in self.workers:
            worker.stop()

    async def _open_summary(self) -> list[str]:
        """Each open workflow's pending activities: type, attempt, state and last failure."""
        lines = []
        for handle in self.handles:
            desc = await handle.describe()
            if desc.status != WorkflowExecutionStatus.RUNNING:
                continue
            for p in desc.raw_description.pending_activities:
                state = PendingActivityState.Name(p.state)
                lines.append(f"{handle.id}: {p.activity_type.name} attempt {p.attempt} {state} "
                             f"{p.last_failure.message[:200]!r}")  # fmt: skip
        return lines

    async def all_closed(self) -> bool:
        for handle in self.handles:
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                return False
        return True

    async def pending(self, activity: str | None = None) -> list[PendingActivityInfo]:
        """Pending activities (of one type, if given) of the run's open workflows."""
        found = []
        for handle in self.handles:
            desc = await handle.describe()
            for p in desc.raw_description.pending_activities:
                if activity is None or p.activity_type.name == activity:
                    found.append(p)
        return found

    async def at_step(self, steps: set[str]) -> bool:
        for handle in self.handles:
            if (await handle.query("state"))["current"] in steps:
                return True
        return False


async def _client(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


def _kill(worker: WorkerProcess) -> None:
    """SIGKILL the worker's whole process group: no cleanup, no goodbye to Temporal."""
    try:
        os.killpg(worker.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    worker.wait_dead(timeout=30)


async def verify_run(run: Run) -> None:
    """Every exposure completed and unembargoed; each effect found once in the systems."""
    row, settings = run.row, run.settings
    statuses = Counter([(await h.describe()).status for h in run.handles])
    row.completed = statuses[WorkflowExecutionStatus.COMPLETED]
    row.failed = len(run.handles) - row.completed
    assert row.completed == len(run.seeded), statuses
    for seeded in run.seeded:
        check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))
    _check_destination(run)
    _check_butler(run)
    _check_rucio(run)
    await _count_retries(run)
    ledger = effects(settings, {s.obs_id for s in run.seeded})
    row.ledger_rows = sum(ledger.values())
    row.ledger_repeats = sum(n - 1 for n in ledger.values())
    # The ledger row is written just before each effect: every effect has at least one.
    for seeded in run.seeded:
        for step, action in (("zip", "install"), ("export", "install"), ("ingest", "ingest_zip"),
                             ("register", "add_replicas"), ("register", "attach"),
                             ("tag", "close"), ("tag", "set_metadata")):  # fmt: skip
            assert ledger[(seeded.obs_id, step, action)] >= 1, (seeded.obs_id, step, action)


def _check_destination(run: Run) -> None:
    """Exactly the final files, each installed once (inode and mtime as first seen), no staging left."""
    run.sample()
    folder = run.settings.dest_root / "LSSTCam" / str(run.day)
    wanted = {f"{s.obs_id}.zip" for s in run.seeded} | {f"{s.obs_id}_dimensions.yaml" for s in run.seeded}
    assert {p.name for p in folder.iterdir()} == wanted, "files other than the final ones (staging?) remain"
    for path, first in run.first_seen.items():
        st = path.stat()
        assert (st.st_ino, st.st_mtime_ns) == first, f"{path.name} was replaced after it was installed"
        assert st.st_nlink == 1, f"{path.name} still has a staging link"
    run.row.zips = sum(1 for name in wanted if name.endswith(".zip"))


def _check_butler(run: Run) -> None:
    """The main butler holds each of the exposure's dataset ids exactly once, and nothing else."""
    embargo = Butler.from_config(run.settings.embargo_butler)
    main = Butler.from_config(run.settings.main_butler)
    total = 0
    for seeded in run.seeded:
        query = {"collections": "*", "find_first": False, "instrument": "LSSTCam",
                 "exposure": seeded.exposure_id, "explain": False}  # fmt: skip
        want = [ref.id for ref in embargo.query_datasets("raw", **query)]
        got = [ref.id for ref in main.query_datasets("raw", **query)]
        assert len(got) == len(set(got)) and set(got) == set(want), seeded.obs_id
        total += len(got)
    run.row.ingested_datasets = total


def _check_rucio(run: Run) -> None:
    """One replica per file; each file attached once to each of its datasets; no other files."""
    settings = run.settings
    client = rucio_connect(settings)
    scope = settings.rucio_scope
    replicas = attachments = 0
    for seeded in run.seeded:
        files = [names.zip_relpath("LSSTCam", run.day, seeded.obs_id),
                 names.yaml_relpath("LSSTCam", run.day, seeded.obs_id)]  # fmt: skip
        for name in files:
            found = list(client.list_replicas([{"scope": scope, "name": name}], schemes=["file"]))
            assert len(found) == 1 and list(found[0]["rses"]) == [settings.rucio_rse], found
            replicas += 1
        for dataset in names.exposure_datasets("LSSTCam", run.day, seeded.obs_id, seeded.tracts):
            content = Counter(c["name"] for c in client.list_content(scope, dataset))
            assert all(content[name] == 1 for name in files), (dataset, content)
            attachments += len(files)
    # No DID beyond the exposures' files and datasets (nothing registered under another name).
    dids = {d for d in client.list_dids(scope, {"name": "*"}, did_type="all")}
    all_files = {names.zip_relpath("LSSTCam", run.day, s.obs_id) for s in run.seeded} | {
        names.yaml_relpath("LSSTCam", run.day, s.obs_id) for s in run.seeded
    }
    assert {d for d in dids if d.startswith(f"LSSTCam/{run.day}/")} == all_files
    run.row.replicas, run.row.attachments = replicas, attachments


async def _count_retries(run: Run) -> None:
    """Activity attempts beyond the first, read from each workflow's history."""
    retried = 0
    for handle in run.handles:
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attempt = event.activity_task_started_event_attributes.attempt
                run.row.max_attempt = max(run.row.max_attempt, attempt)
                retried += attempt > 1
    run.row.retried_activities = retried


@pytest.fixture
async def record() -> AsyncIterator[list[Row]]:
    """Rows a test fills; kept for the results table even when the test fails."""
    rows: list[Row] = []
    began = time.monotonic()
    yield rows
    while WORKERS:
        WORKERS.pop().stop()
    for row in rows:
        row.duration_s = row.duration_s or round(time.monotonic() - began, 1)
    ROWS.extend(rows)


async def kill_workers(own: Settings, size: Size, rows: list[Row]) -> None:
    """Two workers on the same locations; SIGKILL one at a random instant, again and again."""
    row = Row("worker SIGKILL at random instants, 2 workers per location", size.variant, size.kill_exposures)
    rows.append(row)
    run = Run(own, await _client(own), row)
    seed = random.randrange(1 << 30)
    row.notes.append(f"random seed {seed}")
    rng = random.Random(seed)
    run.worker()
    run.worker()
    await run.start(size.kill_exposures)
    run.watch(workers=0)
    while row.injected < size.kills and not await run.all_closed():
        await asyncio.sleep(rng.uniform(2.0, 9.0))  # the random instant of the next kill
        live = run.live_workers()
        if live:
            _kill(rng.choice(live))
            row.injected += 1
        run.worker()
    await run.finish(size.timeout_s)
    assert row.injected >= size.kills, f"the run ended after {row.injected} kills"
    await verify_run(run)


async def outages(fault: FaultStack, own: Settings, size: Size, rows: list[Row]) -> None:
    """S3, Rucio and PostgreSQL unreachable for ``outage_s`` each, then Temporal restarted."""
    client = await _client(own)
    for service in ("s3", "rucio", "postgres", "temporal"):
        row = Row(f"{service} down {size.outage_s:.0f} s", size.variant, size.outage_exposures)
        rows.append(row)
        began = time.monotonic()
        await _outage(fault, Run(own, client, row), service, size)
        row.duration_s = round(time.monotonic() - began, 1)


# Activities that need each service, so retry visibly while it is down.
NEEDS = {
    "s3": {STEPS[Step.ZIP].activity},
    "rucio": {STEPS[Step.REGISTER].activity, STEPS[Step.TAG].activity},
    "postgres": {STEPS[Step.REGISTER].activity, STEPS[Step.TAG].activity},
}


async def _outage(fault: FaultStack, run: Run, service: str, size: Size) -> None:
    """One batch of exposures through one outage of ``service``."""
    await run.start(size.outage_exposures)
    if service == "s3":
        # Before the first zip lists its folder: every zip meets the outage.
        fault.proxy.refuse()
        run.watch()
    else:
        # Stopped before any step that needs it has run, so the outage cannot be missed.
        steps = {"zip", "export"} if service == "temporal" else {"zip", "export", "ingest"}
        run.watch()
        await poll_until(lambda: run.at_step(steps), timeout=size.timeout_s, what=f"a step in {steps}")
        fault.stop(service)
    run.row.injected = 1
    down_at = time.monotonic()
    try:
        if service in NEEDS:
            retried = partial(_retrying, run, NEEDS[service])
            await poll_until(retried, timeout=size.outage_s + 120, what=f"a retry ({service})")
        # The rest of the outage itself, not a wait for state.
        await asyncio.sleep(max(0.0, size.outage_s - (time.monotonic() - down_at)))
        run.row.notes.append(f"outage {time.monotonic() - down_at:.0f} s")
    finally:
        # Back up whatever happened, so a failure here does not take the service from the next test.
        if service == "s3":
            fault.proxy.resume()
        else:
            fault.start(service)
    await run.finish(size.timeout_s)
    await verify_run(run)
    if service in NEEDS:
        assert run.row.max_attempt > 1, f"no activity was retried during the {service} outage"


async def _retrying(run: Run, activities: set[str]) -> bool:
    """True once one of ``activities`` failed and is pending a retry, visibly (attempt > 1, last failure)."""
    seen = [
        p
        for p in await run.pending()
        if p.activity_type.name in activities
        and p.attempt > 1
        and p.last_failure.message
        # The server's stand-in for a failure too large to keep: the reason would be lost to the UI.
        and "exceeds size limit" not in p.last_failure.message
    ]
    if seen:
        p = seen[0]
        why = p.last_failure.message[:80]
        run.row.notes.append(f"pending {p.activity_type.name} attempt {p.attempt}: {why}")
    return bool(seen)


async def destination_full(own: Settings, size: Size, rows: list[Row]) -> None:
    """A tmpfs destination filled up: DestinationFull, retried; nothing final; done once freed."""
    row = Row("destination filesystem full", size.variant, size.full_exposures)
    rows.append(row)
    root = own.dest_root
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size.full_exposures * 5 + 4}m", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({mounted.stderr.strip()})")
    try:
        ballast = root / "ballast"
        _fill(ballast)
        run = Run(own, await _client(own), row)
        await run.start(size.full_exposures)
        run.watch()
        await poll_until(lambda: _full_between_attempts(run), timeout=size.timeout_s, what="a zip to wait")
        row.injected = 1
        assert not run.first_seen, "a file was installed under its final name on the full destination"
        ballast.unlink()
        await run.finish(size.timeout_s)
        await verify_run(run)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _fill(path: Path) -> None:
    """Write zeros until the filesystem is full."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError:
            pass
    # Close may fail to flush the last buffer: the filesystem is full either way.


async def _full_between_attempts(run: Run) -> bool:
    """A zip whose last failure is DestinationFull is between attempts, and has left no file.

    Its workflow is described again after the listing: the check counts only if that same attempt
    was still waiting throughout (other exposures' attempts may be writing their staging files).
    """
    waiting = await _waiting_full(run)
    for handle, attempt in waiting:
        obs_id = handle.id.removeprefix("unembargo-LSSTCam-")
        folder = run.settings.dest_root / "LSSTCam" / str(run.day)
        left = sorted(p.name for p in folder.glob(f"*{obs_id}*")) if folder.exists() else []
        if (handle, attempt) in await _waiting_full(run):
            assert not left, f"{obs_id} left files on the full destination between attempts: {left}"
            run.row.notes.append(f"{obs_id} zip waiting after attempt {attempt - 1}, no file left")
            return True
    return False


async def _waiting_full(run: Run) -> list[tuple[WorkflowHandle[object, object], int]]:
    """(workflow, attempt) of each zip scheduled for attempt > 1 after a DestinationFull failure."""
    found = []
    for handle in run.handles:
        for p in (await handle.describe()).raw_description.pending_activities:
            failure = p.last_failure
            if (
                p.activity_type.name == STEPS[Step.ZIP].activity
                and p.attempt > 1
                and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
                and failure.application_failure_info.type == "DestinationFull"
                and "destination full" in failure.message
            ):
                if not any("last failure" in n for n in run.row.notes):
                    run.row.notes.append(f"last failure: {failure.message[:100]}")
                found.append((handle, p.attempt))
    return found


def _write_results() -> None:
    """The rows of this module's runs: a table on stdout and JSON under benchmarks/results/."""
    if not ROWS:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    variants = "-".join(sorted({r.variant for r in ROWS}))
    out = RESULTS / f"faults-{variants}-{stamp}.json"
    out.write_text(json.dumps([asdict(r) for r in ROWS], indent=2))
    print(f"\nfault injection results ({out}):")
    heads = ("exp", "ok", "fail", "inj", "maxatt", "retried", "zips", "datasets", "repl", "attach", "ledger")
    print(f"{'fault':58} " + " ".join(f"{h:>8}" for h in heads) + f" {'repeats':>8} {'s':>8}")
    for r in ROWS:
        values = (r.exposures, r.completed, r.failed, r.injected, r.max_attempt, r.retried_activities,
                  r.zips, r.ingested_datasets, r.replicas, r.attachments, r.ledger_rows, r.ledger_repeats,
                  r.duration_s)  # fmt: skip
        print(f"{r.fault:58} " + " ".join(f"{v:>8}" for v in values))


async def test_worker_kills(own: Settings, record: list[Row]) -> None:
    await kill_workers(own, CI, record)


async def test_outages(fault: FaultStack, own: Settings, record: list[Row]) -> None:
    await outages(fault, own, CI, record)


async def test_destination_full(own: Settings, record: list[Row]) -> None:
    await destination_full(own, CI, record)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_worker_kills_full(own: Settings, record: list[Row]) -> None:
    await kill_workers(own, FULL, record)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_outages_full(fault: FaultStack, own: Settings, record: list[Row]) -> None:
    await outages(fault, own, FULL, record)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_destination_full_full(own: Settings, record: list[Row]) -> None:
    await destination_full(own, FULL, record)
