"""The arrival workflow's logic (workflows/arrival.py) on Temporal's time-skipping test server.

Every activity is a stub under its real name, over a fake folder: it counts calls, so a
test can tell that no raw was ingested twice, that the visit was defined once and that
the unembargo workflow was started once, at the embargo end.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.models import arrival as a
from unembargo.workflows.arrival import ArrivalWorkflow

INSTRUMENT, DAY, OBS = "LSSTCam", 20251231, "MC_O_20251231_000010"
EXPOSURE_ID = 2025123100010
EXPECTED_NAME = f"{OBS}_expectedSensors.json"
RESULT_TIMEOUT = 60


def raw(det: str) -> str:
    return f"{OBS}_{det}.fits"


def dets(n: int) -> list[str]:
    return [f"R{i // 9:02d}_S{i % 9:02d}" for i in range(n)]


@dataclass
class Folder:
    """The fake bucket folder and everything the stubs were asked."""

    expected: list[str]
    objects: set[str] = field(default_factory=set)
    on_sky: bool = True
    period: timedelta = timedelta(hours=80)
    # Raws that read as "not there yet" this many times before they read.
    late: dict[str, int] = field(default_factory=dict)
    ingested: Counter[str] = field(default_factory=Counter)
    visits: int = 0
    starts: list[tuple[str, datetime]] = field(default_factory=list)
    embargo_end: datetime | None = None

    def activities(self) -> list:
        folder = self

        @activity.defn(name=a.STEPS[a.Step.LIST].activity)
        async def list_folder(inp: a.FolderInput) -> a.FolderReceipt:
            return a.FolderReceipt(sorted(folder.objects))

        @activity.defn(name=a.STEPS[a.Step.EXPECTED].activity)
        async def expected(inp: a.FolderInput) -> a.ExpectedReceipt:
            return a.ExpectedReceipt(list(folder.expected))

        @activity.defn(name=a.STEPS[a.Step.INGEST].activity)
        async def ingest(inp: a.IngestBatchInput) -> a.IngestBatchReceipt:
            out = []
            for name in inp.names:
                if folder.late.get(name, 0) > 0:
                    folder.late[name] -= 1
                    out.append(a.FileOutcome(name, a.UNREADABLE, reason="no such object (yet)"))
                    continue
                det = name.removeprefix(f"{OBS}_").removesuffix(".fits")
                folder.ingested[name] += 1
                kind = a.INGESTED if folder.ingested[name] == 1 else a.ALREADY
                out.append(a.FileOutcome(name, kind, det))
            facts = a.ExposureFacts(EXPOSURE_ID, folder.on_sky, "science" if folder.on_sky else "bias")
            return a.IngestBatchReceipt(out, facts)

        @activity.defn(name=a.STEPS[a.Step.VISITS].activity)
        async def visits(inp: a.VisitInput) -> a.VisitReceipt:
            folder.visits += 1
            return a.VisitReceipt(inp.exposure_id, len(folder.ingested), already_done=False)

        @activity.defn(name=a.STEPS[a.Step.EMBARGO].activity)
        async def embargo(inp: a.EmbargoInput) -> a.EmbargoReceipt:
            # The server's (skipped) clock, not this process's.
            folder.embargo_end = activity.info().current_attempt_scheduled_time + folder.period
            return a.EmbargoReceipt(folder.embargo_end.isoformat(), folder.period.total_seconds(), 1)

        @activity.defn(name=a.STEPS[a.Step.START].activity)
        async def start(inp: a.StartInput) -> a.StartReceipt:
            folder.starts.append((inp.exposure.obs_id, activity.info().current_attempt_scheduled_time))
            return a.StartReceipt(f"unembargo-{INSTRUMENT}-{OBS}", "started")

        return [list_folder, expected, ingest, visits, embargo, start]


POLICY = a.ArrivalPolicy(batch_size=25, batch_wait_s=1, retry_s=30, incomplete_wait_s=7200, heartbeat_s=30)


async def signal(
    client: Client, queue: str, name: str, policy: a.ArrivalPolicy = POLICY, wid: str = ""
) -> WorkflowHandle:
    """What `unembargo listen` does for one notification: signal-with-start.

    The handle it returns waits with time skipping (a handle from get_workflow_handle would not).
    """
    wid = wid or a.arrival_workflow_id(INSTRUMENT, OBS)
    return await client.start_workflow(
        a.ARRIVAL_WORKFLOW,
        a.ArrivalInput(INSTRUMENT, DAY, OBS, queue, policy),
        id=wid,
        task_queue=queue,
        start_signal=a.OBJECT_SIGNAL,
        start_signal_args=[a.ObjectEvent(INSTRUMENT, DAY, OBS, name)],
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    )


def worker(env: WorkflowEnvironment, queue: str, folder: Folder) -> Worker:
    return Worker(env.client, task_queue=queue, workflows=[ArrivalWorkflow], activities=folder.activities())


def wid() -> str:
    return f"arrival-{INSTRUMENT}-{uuid.uuid4().hex[:8]}"


async def test_duplicates_and_out_of_order_ingest_each_raw_once_then_start_at_embargo_end(env, queue):
    names = dets(12)
    folder = Folder(expected=names)
    # Out of order: the expectedSensors file first, raws backwards, sidecars between; every
    # event twice (a replayed notification), and the whole set once more.
    events = [EXPECTED_NAME] + [n for d in reversed(names) for n in (raw(d), f"{OBS}_{d}.json")]
    folder.objects = set(events)
    async with worker(env, queue, folder):
        w = wid()
        for name in events + events + list(reversed(events)):
            handle = await signal(env.client, queue, name, wid=w)
        state = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert set(folder.ingested) == {raw(d) for d in names}
    assert max(folder.ingested.values()) == 1, "a raw was ingested twice"
    assert folder.visits == 1
    assert len(folder.starts) == 1 and folder.embargo_end is not None
    assert folder.starts[0][1] >= folder.embargo_end, "started before the embargo ended"
    assert state["step"] == a.STARTED and state["missing"] == [] and state["complete"]
    assert state["sidecars"] == 12 and state["raws_ingested"] == 12
    assert state["duplicates"] == 2 * len(events) + len(events)


async def test_a_calibration_starts_at_once_without_a_visit(env, queue):
    names = dets(3)
    folder = Folder(expected=names, on_sky=False, period=timedelta(0))
    folder.objects = {EXPECTED_NAME, *(raw(d) for d in names)}
    async with worker(env, queue, folder):
        w = wid()
        for name in sorted(folder.objects):
            handle = await signal(env.client, queue, name, wid=w)
        state = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert folder.visits == 0 and len(folder.starts) == 1
    assert state["step"] == a.STARTED and state["visit_defined"]


async def test_lost_notifications_are_found_by_the_first_listing(env, queue):
    names = dets(5)
    folder = Folder(expected=names)
    folder.objects = {EXPECTED_NAME, *(raw(d) for d in names)}
    async with worker(env, queue, folder):
        # One notification reached us; the others were lost, but the objects are in the folder.
        handle = await signal(env.client, queue, raw(names[0]), wid=wid())
        await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert set(folder.ingested) == {raw(d) for d in names} and len(folder.starts) == 1


async def test_an_object_not_readable_yet_is_read_again_later(env, queue):
    names = dets(4)
    folder = Folder(expected=names, late={raw(names[2]): 3})
    folder.objects = {EXPECTED_NAME, *(raw(d) for d in names)}
    async with worker(env, queue, folder):
        w = wid()
        for name in sorted(folder.objects):
            handle = await signal(env.client, queue, name, wid=w)
        state = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert folder.ingested[raw(names[2])] == 1 and state["complete"] and state["unreadable"] == []


async def test_an_incomplete_exposure_is_reported_by_name_after_incomplete_wait(env, queue):
    names = dets(4)
    folder = Folder(expected=names)
    folder.objects = {EXPECTED_NAME, *(raw(d) for d in names[:3])}
    async with worker(env, queue, folder):
        w = wid()
        for name in sorted(folder.objects):
            handle = await signal(env.client, queue, name, wid=w)
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
        state = await handle.query(ArrivalWorkflow.state)
    cause = failed.value.cause
    assert getattr(cause, "type", None) == "IncompleteExposure"
    assert OBS in str(cause) and names[3] in str(cause) and "1 of 4" in str(cause)
    assert state.missing == [names[3]] and state.step == a.INCOMPLETE
    assert folder.starts == []


async def test_a_full_focal_plane_of_signals_continues_as_new_and_loses_nothing(env, queue):
    names = dets(205)
    folder = Folder(expected=names, period=timedelta(minutes=5))
    events = [n for d in names for n in (raw(d), f"{OBS}_{d}.json")] + [EXPECTED_NAME]
    folder.objects = set(events)
    policy = a.ArrivalPolicy(batch_size=25, batch_wait_s=1, history_limit=150)
    async with worker(env, queue, folder):
        w = wid()
        for name in events:
            handle = await signal(env.client, queue, name, policy=policy, wid=w)
        # Replays after the first runs are done: still no-ops.
        for name in events[:50]:
            await signal(env.client, queue, name, policy=policy, wid=w)
        state = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert state["runs"] > 1, "history was not bounded by continue-as-new"
    assert len(folder.ingested) == 205 and max(folder.ingested.values()) == 1
    assert len(folder.starts) == 1 and state["raws_ingested"] == 205 and state["sidecars"] == 205


async def test_the_sweep_schedules_workflow_runs_its_activity_on_the_given_queue(env, queue):
    from unembargo.workflows.arrival_sweep import ArrivalSweepWorkflow

    asked: list[a.SweepInput] = []

    @activity.defn(name=a.SWEEP_ACTIVITY)
    async def sweep(inp: a.SweepInput) -> a.SweepResult:
        asked.append(inp)
        return a.SweepResult(exposures=2, signalled=3, by_state={"caught up": 1, "started": 1})

    async with Worker(env.client, task_queue=queue, workflows=[ArrivalSweepWorkflow], activities=[sweep]):
        result = await env.client.execute_workflow(
            a.SWEEP_WORKFLOW, a.SweepInput(queue=queue), id=wid(), task_queue=queue, result_type=a.SweepResult
        )
    assert result.signalled == 3 and asked == [a.SweepInput(queue=queue)]
