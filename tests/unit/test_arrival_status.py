"""Reading an exposure's arrival state (client/status.py) from real arrival workflows on
Temporal's time-skipping test server, with stub activities under the real names.

Each exposure is driven into one state (arriving, embargoed, incomplete, started, none)
and read back the two ways `status` and `reconcile` read it: one exposure (describe,
then the ``state`` query while it runs) and a day's listing (the same reading from the
execution alone; the test server has no visibility list, so a description stands in for
the listed execution: it is one). The missing-sensor count of an incomplete arrival is
read from the workflow's own failure message, so a change of that message fails here.
`unembargo status OBS_ID` of an exposure still arriving shows its arrival (no unembargo
workflow yet), and the day view lists arrivals that have no unembargo workflow.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.cli import status as cli_status
from unembargo.client.status import NoWorkflow, arrival_run, arrival_status, with_embargo_ends
from unembargo.models import arrival as a
from unembargo.models import names
from unembargo.models.reconcile import (
    ARRIVAL_ARRIVING,
    ARRIVAL_EMBARGOED,
    ARRIVAL_INCOMPLETE,
    ARRIVAL_STARTED,
    NOT_ARRIVED,
)
from unembargo.models.settings import Settings
from unembargo.workflows.arrival import ArrivalWorkflow

INSTRUMENT, DAY = "LSSTCam", 20251231
DETECTORS = [f"R22_S{i:02d}" for i in range(12)]
POLICY = a.ArrivalPolicy(batch_size=25, batch_wait_s=0.01, retry_s=30, incomplete_wait_s=7200, heartbeat_s=30)


def new_obs() -> str:
    return f"MC_O_{DAY}_{uuid.uuid4().int % 10**6:06d}"


@dataclass
class Exposure:
    """A fake exposure folder: which raws it holds, its embargo period."""

    obs_id: str
    present: list[str]
    period: timedelta = timedelta(hours=80)
    embargo_end: datetime | None = None
    objects: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.objects = {names.expected_sensors_name(self.obs_id)} | {
            f"{self.obs_id}_{det}.fits" for det in self.present
        }


class Stubs:
    """The arrival activities over fake folders, by obs_id."""

    def __init__(self) -> None:
        self.exposures: dict[str, Exposure] = {}

    def add(self, exp: Exposure) -> Exposure:
        self.exposures[exp.obs_id] = exp
        return exp

    def activities(self) -> list:
        stubs = self

        @activity.defn(name=a.STEPS[a.Step.LIST].activity)
        async def list_folder(inp: a.FolderInput) -> a.FolderReceipt:
            return a.FolderReceipt(sorted(stubs.exposures[inp.obs_id].objects))

        @activity.defn(name=a.STEPS[a.Step.EXPECTED].activity)
        async def expected(inp: a.FolderInput) -> a.ExpectedReceipt:
            return a.ExpectedReceipt(list(DETECTORS))

        @activity.defn(name=a.STEPS[a.Step.INGEST].activity)
        async def ingest(inp: a.IngestBatchInput) -> a.IngestBatchReceipt:
            files = [
                a.FileOutcome(n, a.INGESTED, n.removeprefix(f"{inp.obs_id}_").removesuffix(".fits"))
                for n in inp.names
            ]
            return a.IngestBatchReceipt(files, a.ExposureFacts(int(inp.obs_id[-6:]), False, "bias"))

        @activity.defn(name=a.STEPS[a.Step.VISITS].activity)
        async def visits(inp: a.VisitInput) -> a.VisitReceipt:
            return a.VisitReceipt(None, 0, already_done=False)

        @activity.defn(name=a.STEPS[a.Step.EMBARGO].activity)
        async def embargo(inp: a.EmbargoInput) -> a.EmbargoReceipt:
            exp = next(e for e in stubs.exposures.values() if int(e.obs_id[-6:]) == inp.exposure_id)
            exp.embargo_end = activity.info().current_attempt_scheduled_time + exp.period
            return a.EmbargoReceipt(exp.embargo_end.isoformat(), exp.period.total_seconds(), 1)

        @activity.defn(name=a.STEPS[a.Step.START].activity)
        async def start(inp: a.StartInput) -> a.StartReceipt:
            return a.StartReceipt(f"unembargo-{INSTRUMENT}-{inp.exposure.obs_id}", "started")

        return [list_folder, expected, ingest, visits, embargo, start]


async def arrive(
    client: Client, queue: str, exp: Exposure, policy: a.ArrivalPolicy = POLICY
) -> WorkflowHandle:
    """Signal-with-start its arrival with one object (the first listing finds the rest)."""
    return await client.start_workflow(
        a.ARRIVAL_WORKFLOW,
        a.ArrivalInput(INSTRUMENT, DAY, exp.obs_id, queue, policy),
        id=a.arrival_workflow_id(INSTRUMENT, exp.obs_id),
        task_queue=queue,
        start_signal=a.OBJECT_SIGNAL,
        start_signal_args=[a.ObjectEvent(INSTRUMENT, DAY, exp.obs_id, sorted(exp.objects)[0])],
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    )


async def until_step(env: WorkflowEnvironment, handle: WorkflowHandle, step: str) -> None:
    """Let the workflow run (skipping time) until its `step` search attribute says ``step``."""
    for _ in range(200):
        desc = await handle.describe()
        if desc.typed_search_attributes.get(names.SA_STEP) == step:
            return
        await env.sleep(0.05)
    raise AssertionError(f"{handle.id} never reached step {step}")


async def test_an_arriving_exposure_shows_how_many_sensors_have_their_raw(
    env: WorkflowEnvironment, queue: str
):
    stubs = Stubs()
    exp = stubs.add(Exposure(new_obs(), present=DETECTORS[:9]))
    async with Worker(
        env.client, task_queue=queue, workflows=[ArrivalWorkflow], activities=stubs.activities()
    ):
        handle = await arrive(env.client, queue, exp)
        for _ in range(200):
            state = await handle.query("state", result_type=a.ArrivalState)
            if state.raws_ingested == 9 and state.expected == 12:
                break
            await env.sleep(0.05)
        got = await arrival_status(env.client, INSTRUMENT, exp.obs_id)
        assert (got.state, got.status, got.step) == (ARRIVAL_ARRIVING, "running", a.ARRIVING)
        assert (got.expected, got.missing, got.raws_ingested) == (12, 3, 9)
        assert (
            "arriving since " in got.describe()
            and "9 of 12 expected sensors have their raw" in got.describe()
        )
        # A day's listing has no query: the state without counts.
        listed = await arrival_run(env.client, await handle.describe())
        assert listed.state == ARRIVAL_ARRIVING and listed.missing is None
        # `unembargo status OBS_ID`: no unembargo workflow yet, but an arrival: that, not NoWorkflow.
        settings = Settings(
            temporal_address=env.client.service_client.config.target_host,
            temporal_namespace=env.client.namespace,
        )
        found, shown = await cli_status._one(settings, INSTRUMENT, exp.obs_id)
        assert found is None and shown.state == ARRIVAL_ARRIVING and shown.missing == 3
        with pytest.raises(NoWorkflow):
            await cli_status._one(settings, INSTRUMENT, new_obs())
        await handle.terminate("test over")


async def test_an_embargoed_exposure_shows_its_embargo_end(env: WorkflowEnvironment, queue: str):
    stubs = Stubs()
    exp = stubs.add(Exposure(new_obs(), present=DETECTORS))
    async with Worker(
        env.client, task_queue=queue, workflows=[ArrivalWorkflow], activities=stubs.activities()
    ):
        handle = await arrive(env.client, queue, exp)
        await until_step(env, handle, a.EMBARGOED)
        got = await arrival_status(env.client, INSTRUMENT, exp.obs_id)
        assert got.state == ARRIVAL_EMBARGOED and got.embargo_end == exp.embargo_end
        assert f"waiting for its embargo end at {exp.embargo_end:%Y-%m-%d %H:%M:%S} UTC" in got.describe()
        # From a listing, the end comes from the embargo butler (by obs_id).
        listed = await arrival_run(env.client, await handle.describe())
        assert listed.state == ARRIVAL_EMBARGOED and listed.embargo_end is None
        assert "a time not known here" in listed.describe()
        filled = with_embargo_ends({exp.obs_id: listed}, {exp.obs_id: exp.embargo_end})
        assert filled[exp.obs_id].embargo_end == exp.embargo_end
        await handle.terminate("test over")


async def test_an_incomplete_exposure_shows_its_missing_sensor_count(env: WorkflowEnvironment, queue: str):
    stubs = Stubs()
    exp = stubs.add(Exposure(new_obs(), present=DETECTORS[:9]))
    short = a.ArrivalPolicy(batch_wait_s=0.01, retry_s=30, incomplete_wait_s=600, heartbeat_s=30)
    async with Worker(
        env.client, task_queue=queue, workflows=[ArrivalWorkflow], activities=stubs.activities()
    ):
        handle = await arrive(env.client, queue, exp, short)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        for got in (
            await arrival_status(env.client, INSTRUMENT, exp.obs_id),
            await arrival_run(env.client, await handle.describe()),
        ):
            assert (got.state, got.status, got.step) == (ARRIVAL_INCOMPLETE, "failed", a.INCOMPLETE)
            assert (got.missing, got.expected) == (3, 12), got.error
            text = got.describe(DAY)
            assert text.startswith("incomplete: 3 of 12 expected sensors have no raw. Re-send")
            assert f"`unembargo arrivals sweep --day {DAY}`" in text


async def test_a_started_exposure_and_one_never_heard_of(env: WorkflowEnvironment, queue: str):
    stubs = Stubs()
    exp = stubs.add(Exposure(new_obs(), present=DETECTORS, period=timedelta(0)))
    async with Worker(
        env.client, task_queue=queue, workflows=[ArrivalWorkflow], activities=stubs.activities()
    ):
        handle = await arrive(env.client, queue, exp)
        await handle.result()
        got = await arrival_status(env.client, INSTRUMENT, exp.obs_id)
        assert (got.state, got.status, got.step) == (ARRIVAL_STARTED, "completed", a.STARTED)
    never = await arrival_status(env.client, INSTRUMENT, new_obs())
    assert never.state == NOT_ARRIVED and never.workflow_id.startswith("arrival-LSSTCam-MC_O_")
    assert "arrivals sweep" in never.describe(DAY)


def test_the_day_view_lists_arrivals_without_an_unembargo_workflow(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from unembargo.models.reconcile import ArrivalRun, WorkflowRun

    done, waiting = new_obs(), new_obs()
    runs = {done: WorkflowRun(f"unembargo-{INSTRUMENT}-{done}", "completed", "done")}
    arrivals = {
        done: ArrivalRun(a.arrival_workflow_id(INSTRUMENT, done), ARRIVAL_STARTED, "completed", a.STARTED),
        waiting: ArrivalRun(
            a.arrival_workflow_id(INSTRUMENT, waiting), ARRIVAL_INCOMPLETE, "failed", a.INCOMPLETE,
            missing=2, expected=205,
        ),
    }  # fmt: skip
    cli_status._print_day(runs, arrivals, DAY, as_json=True)
    day = json.loads(capsys.readouterr().out)
    assert day[done]["status"] == "completed" and day[done]["arrival"]["state"] == ARRIVAL_STARTED
    assert day[waiting]["status"] == "not-started" and day[waiting]["arrival"]["missing"] == 2
    width, cli_status.console.width = cli_status.console.width, 300
    try:
        cli_status._print_day(runs, arrivals, DAY, as_json=False)
    finally:
        cli_status.console.width = width
    table = capsys.readouterr().out
    assert "arrival" in table and "incomplete: 2 of 205 expected sensors have no raw" in table
    assert "1 arrival incomplete, 1 completed" in table
