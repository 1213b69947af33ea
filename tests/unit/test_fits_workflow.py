"""The FITS workflows' logic (workflows/fits.py) on Temporal's time-skipping test server.

Every step is a stub under its real activity name that counts its calls (and, for
exports, when each attempt was scheduled on the server's skipped clock). The watch test's
scan is the real scan (adapters/fits_watch) over a temporary folder and database, with
starts recorded instead of made.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import fits_samples as fs
import pytest
from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.adapters import fits_watch
from unembargo.models import fits_flow as ff
from unembargo.models.tables import connect
from unembargo.workflows.fits import FitsFileWorkflow, FitsRequeueWorkflow, FitsWatchWorkflow

RESULT = timedelta(seconds=60)
ARCHIVE, MIRROR = "archive", "mirror"


@dataclass
class World:
    """What the stubs were asked, and how they misbehave."""

    queue: str
    # Destination -> export attempts that fail (it is down) before one succeeds.
    down: dict[str, int] = field(default_factory=dict)
    fits_ok: bool = True
    preview_fails: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    # Destination -> when each export attempt was scheduled (server time).
    attempts: dict[str, list[datetime]] = field(default_factory=dict)
    # (step, server time) of every call that succeeded, in order.
    done: list[tuple[str, datetime]] = field(default_factory=list)
    copy_gate: asyncio.Event | None = None
    in_copy: int = 0
    max_in_copy: int = 0

    def _done(self, what: str) -> None:
        self.calls[what] += 1
        self.done.append((what, activity.info().current_attempt_scheduled_time))

    def activities(self) -> list:
        world = self

        @activity.defn(name=ff.STEPS[ff.Step.COPY].activity)
        async def copy(inp: ff.CopyInput) -> ff.CopyReceipt:
            world.in_copy += 1
            world.max_in_copy = max(world.max_in_copy, world.in_copy)
            try:
                if world.copy_gate is not None:
                    await world.copy_gate.wait()
                world._done("copy")
                return ff.CopyReceipt("0" * 32, 100, copied=True)
            finally:
                world.in_copy -= 1

        @activity.defn(name=ff.STEPS[ff.Step.INGEST].activity)
        async def ingest(inp: ff.IngestInput) -> ff.IngestReceipt:
            world._done("ingest")
            outcome = ff.INGESTED if world.calls["ingest"] == 1 else ff.UNCHANGED
            return ff.IngestReceipt(outcome, "0" * 32, 100, world.fits_ok, "GMOS-N", "OBJECT")

        @activity.defn(name=ff.STEPS[ff.Step.EXPORT].activity)
        async def export(inp: ff.ExportInput) -> ff.ExportReceipt:
            dest = inp.destination
            world.attempts.setdefault(dest, []).append(activity.info().current_attempt_scheduled_time)
            if world.down.get(dest, 0) > 0:
                world.down[dest] -= 1
                raise ApplicationError(f"{dest}: connection refused", type="DestinationUnavailable")
            world._done(f"export:{dest}")
            return ff.ExportReceipt(dest, "uploaded")

        @activity.defn(name=ff.STEPS[ff.Step.ARCHIVE_INGEST].activity)
        async def archive_ingest(inp: ff.IngestInput) -> ff.IngestReceipt:
            world._done("archive_ingest")
            return ff.IngestReceipt(ff.INGESTED, "0" * 32, 100, True, "GMOS-N", "OBJECT")

        @activity.defn(name=ff.STEPS[ff.Step.PREVIEW].activity)
        async def preview(inp: ff.PreviewInput) -> ff.PreviewReceipt:
            world.calls["preview attempts"] += 1
            if world.preview_fails:
                raise ValueError("cannot reshape array of size 10 into shape (64,64)")
            world._done("preview")
            return ff.PreviewReceipt(ff.preview_key(inp.name), True, 64, 64)

        @activity.defn(name=ff.STEPS[ff.Step.CALIBRATION].activity)
        async def calibration(inp: ff.CalibrationInput) -> ff.CalibrationReceipt:
            world._done("calibration")
            return ff.CalibrationReceipt(True, {"BIAS": "N20251231S0001.fits", "FLAT": None, "DARK": None})

        return [copy, ingest, export, archive_ingest, preview, calibration]

    def worker(self, env: WorkflowEnvironment) -> Worker:
        return Worker(
            env.client,
            task_queue=self.queue,
            workflows=[FitsFileWorkflow, FitsWatchWorkflow],
            activities=self.activities(),
        )

    def file_input(self, name: str, **kw: object) -> ff.FileInput:
        place = ff.Place("dataflow", self.queue)
        dests = [ff.Place(ARCHIVE, self.queue), ff.Place(MIRROR, self.queue)]
        return ff.FileInput(name, place, dests, ARCHIVE, dhs=ff.Place("dhs", self.queue), **kw)  # type: ignore[arg-type]


def fname() -> str:
    return f"N20251231S{uuid.uuid4().int % 10**8:08d}.fits"


async def arrive(client: Client, world: World, name: str, what: ff.Again | None = None) -> WorkflowHandle:
    """What the watcher does for a settled file: signal-with-start of the file's workflow."""
    return await client.start_workflow(
        ff.FILE_WORKFLOW,
        world.file_input(name),
        id=ff.fits_workflow_id(name),
        task_queue=world.queue,
        start_signal=ff.AGAIN_SIGNAL,
        start_signal_args=[what or ff.Again()],
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        result_type=ff.FileState,
    )


async def test_a_file_goes_through_every_step_once(env: WorkflowEnvironment, queue: str) -> None:
    world = World(queue)
    async with world.worker(env):
        handle = await arrive(env.client, world, name := fname())
        state = await handle.result(rpc_timeout=RESULT)
    assert state.step == ff.DONE and state.passes == 1 and state.failures == {}
    assert state.exports == {ARCHIVE: "uploaded", MIRROR: "uploaded"}
    assert (state.archive_ingest, state.preview) == (ff.INGESTED, ff.preview_key(name))
    assert state.calibration == {"BIAS": "N20251231S0001.fits", "FLAT": None, "DARK": None}
    assert world.calls == Counter(
        {"copy": 1, "ingest": 1, f"export:{ARCHIVE}": 1, f"export:{MIRROR}": 1, "archive_ingest": 1,
         "preview": 1, "calibration": 1, "preview attempts": 1}
    )  # fmt: skip
    order = [what for what, _ in world.done]
    assert order.index("copy") < order.index("ingest") < order.index(f"export:{ARCHIVE}")
    assert order.index(f"export:{ARCHIVE}") < order.index("archive_ingest") < order.index("preview")


async def test_a_destination_down_is_backed_off_without_holding_the_others(
    env: WorkflowEnvironment, queue: str
) -> None:
    world = World(queue, down={MIRROR: 5})
    async with world.worker(env):
        handle = await arrive(env.client, world, fname())
        state = await handle.result(rpc_timeout=RESULT)
    assert state.exports == {ARCHIVE: "uploaded", MIRROR: "uploaded"} and state.failures == {}
    times = world.attempts[MIRROR]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    # Six attempts, each waiting longer than the one before (the policy doubles from 2 s).
    assert len(times) == 6 and all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] >= 16, gaps
    # The archive's chain finished while the mirror was still down.
    finished = dict((what, when) for what, when in world.done)
    assert finished["calibration"] < finished[f"export:{MIRROR}"]
    assert finished["preview"] < times[-1]


async def test_a_failed_preview_blocks_nothing_and_is_reported(env: WorkflowEnvironment, queue: str) -> None:
    world = World(queue, preview_fails=True)
    async with world.worker(env):
        handle = await arrive(env.client, world, name := fname())
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result(rpc_timeout=RESULT)
        state = await handle.query(ff.STATE_QUERY, result_type=ff.FileState)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "FitsStepFailed"
    assert name in cause.message and "preview" in cause.message and "cannot reshape" in cause.message
    # Three attempts (its retry policy), and everything else done.
    assert world.calls["preview attempts"] == 3 and world.calls["calibration"] == 1
    assert world.calls[f"export:{MIRROR}"] == 1
    assert state.step == ff.FAILED and set(state.failures) == {"preview"}


async def test_a_corrupt_file_is_ingested_with_its_errors_and_not_exported(
    env: WorkflowEnvironment, queue: str
) -> None:
    world = World(queue, fits_ok=False)
    async with world.worker(env):
        handle = await arrive(env.client, world, name := fname())
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result(rpc_timeout=RESULT)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidFits" and name in cause.message
    assert world.calls["ingest"] == 1 and not any(k.startswith("export") for k in world.calls)


async def test_the_same_name_twice_is_one_workflow_and_one_more_pass(
    env: WorkflowEnvironment, queue: str
) -> None:
    world = World(queue, copy_gate=asyncio.Event())
    name = fname()
    async with world.worker(env):
        first = await arrive(env.client, world, name)
        await _until(lambda: world.in_copy > 0)
        # The file is rewritten on the DHS disk (and requeued) while its first copy runs.
        second = await arrive(env.client, world, name)
        await arrive(env.client, world, name, ff.Again(copy=False, force=True))
        assert second.result_run_id == first.result_run_id
        world.copy_gate.set()
        state = await first.result(rpc_timeout=RESULT)
        # Closed: the same name again is a new run of the same id.
        third = await arrive(env.client, world, name)
        await third.result(rpc_timeout=RESULT)
    # Two passes for the three arrivals while running (coalesced), never two copies at once.
    assert state.passes == 2 and world.max_in_copy == 1
    assert world.calls["copy"] == 3 and third.result_run_id != first.result_run_id


async def test_the_watch_polls_and_catches_up_after_an_outage(
    env: WorkflowEnvironment, queue: str, tmp_path: Path
) -> None:
    """The real scan over a folder: files written while the DHS disk cannot be scanned (the
    scan fails, retried with backoff) are started once it can, each once; a file rewritten
    meanwhile is started again, one only touched is not. (A restarted worker is the same
    case: the scan's memory is the database; tests/stack/test_fits.py restarts one.)"""
    engine = connect(f"sqlite:///{tmp_path / 'fits.db'}")
    dhs = tmp_path / "dhs"
    dhs.mkdir()
    started: list[str] = []
    scans = Counter[str]()
    down = asyncio.Event()

    @activity.defn(name=ff.SCAN_ACTIVITY)
    def scan(inp: ff.ScanInput) -> ff.ScanReceipt:
        if down.is_set():
            scans["failed"] += 1
            raise FileNotFoundError(f"DHS folder {dhs} is missing (not mounted?); will retry")
        with Session(engine) as session:
            found = fits_watch.scan(session, inp.dhs, dhs, inp.min_age_s, inp.invalid_after)
            for ready in found.ready:
                started.append(ready.name)
                fits_watch.mark_started(session, inp.dhs, ready)
        scans["scans"] += 1
        return ff.ScanReceipt(found.seen, len(found.ready), found.waiting, len(found.invalid or []))

    def write(sample: fs.Sample) -> None:
        fs.write(dhs / sample.name, sample)
        fs.age(dhs / sample.name, 60)

    samples = fs.night()
    scan_input = ff.ScanInput("dhs", "dataflow", [ARCHIVE], ARCHIVE, queue, min_age_s=10, invalid_after=3)
    write(samples[0])
    write(samples[4])
    handle = await env.client.start_workflow(
        ff.WATCH_WORKFLOW,
        ff.WatchInput(scan_input, queue, poll_s=5, scans_per_run=4),
        id=ff.watch_workflow_id(f"dhs-{uuid.uuid4().hex[:8]}"),
        task_queue=queue,
    )
    from concurrent.futures import ThreadPoolExecutor

    async with Worker(env.client, task_queue=queue, workflows=[FitsWatchWorkflow], activities=[scan],
                      activity_executor=ThreadPoolExecutor(2)):  # fmt: skip
        # Awaiting the (endless) run lets the test server skip ahead over the poller's timers.
        skipping = asyncio.create_task(handle.result(rpc_timeout=RESULT))
        await _until(lambda: scans["scans"] >= 2)
        assert sorted(started) == [samples[0].name, samples[4].name]
        down.set()
        # While the disk is away: three new files, one rewritten, one touched only (same bytes).
        for s in samples[1:4]:
            write(s)
        write(fs.Sample(samples[0].name, "GMOS-N", "BIAS", "", 0.0, "1x1"))
        fs.age(dhs / samples[4].name, 30)
        await _until(lambda: scans["failed"] >= 3)
        before = scans["scans"]
        down.clear()
        # Past a continue-as-new (4 scans a run).
        await _until(lambda: scans["scans"] >= before + 5)
        await handle.terminate("test over")
        with pytest.raises(WorkflowFailureError):
            await skipping
    assert sorted(started) == sorted([samples[4].name, *(s.name for s in samples[:4]), samples[0].name])


async def test_a_requeue_run_asks_its_activity_at_the_dataflow_location(
    env: WorkflowEnvironment, queue: str
) -> None:
    """The schedule's run: one activity, on the queue of the location that holds the files."""
    asked: list[ff.RequeueInput] = []

    @activity.defn(name=ff.REQUEUE_ACTIVITY)
    async def requeue(inp: ff.RequeueInput) -> ff.RequeueReceipt:
        asked.append(inp)
        return ff.RequeueReceipt(selected=3, started=3)

    inp = ff.RequeueInput("dataflow", [ARCHIVE], ARCHIVE, queue, queue, days=2, force_md5=True)
    async with Worker(env.client, task_queue=queue, workflows=[FitsRequeueWorkflow], activities=[requeue]):
        got = await env.client.execute_workflow(
            ff.REQUEUE_WORKFLOW, inp, id=f"fits-requeue-{uuid.uuid4().hex[:8]}", task_queue=queue,
            result_type=ff.RequeueReceipt,
        )  # fmt: skip
    assert got == ff.RequeueReceipt(3, 3) and asked == [inp]


async def _until(check: object, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)
