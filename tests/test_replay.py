"""Safe deploys: recorded histories of real runs must replay on today's workflow code.

Each ``tests/histories/<label>/*.json`` is the full history of a run on the real
stack, recorded by ``test_record_histories`` with the workflow code of its time
(``UNEMBARGO_RECORD_HISTORIES=<label> pytest tests/test_replay.py``). A change
that would break such a run in flight fails here; the fix is ``workflow.patched``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from support import WorkerProcess, fresh_day, plant_foreign_zip, poll_until, start_one
from unembargo.client.schedule import selection_queue
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models import names
from unembargo.models.exposure import ExportReceipt, ExposureInput, ExposureState, Policy, StepInput
from unembargo.models.schedule import SelectInput, SelectResult
from unembargo.models.settings import Settings
from unembargo.workflows.exposure import SA_STEP, ExposureWorkflow
from unembargo.workflows.select import SelectAndStartWorkflow

HISTORIES = Path(__file__).parent / "histories"
LABEL = os.environ.get("UNEMBARGO_RECORD_HISTORIES", "")
FAST = Policy(heartbeat_s=5, incomplete_wait_s=300, incomplete_poll_s=2)


# ---------------------------------------------------------------- recording


async def _start(
    settings: Settings, client: Client, seeded: SeededExposure
) -> WorkflowHandle[object, object]:
    return await start_one(client, settings, seeded, FAST)


async def _save(handle: WorkflowHandle[object, object], name: str) -> None:
    history = await handle.fetch_history()
    folder = HISTORIES / LABEL
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(history.to_json())


async def _record_completed(settings: Settings, client: Client) -> None:
    handle = await _start(settings, client, seed_exposure(settings, fresh_day(), 1))
    await handle.result()
    await _save(handle, "exposure-completed")


async def _record_waited_for_raws(settings: Settings, client: Client) -> None:
    """Two rounds of the incomplete-exposure wait, then the raws arrive."""
    day = fresh_day()
    handle = await _start(settings, client, seed_exposure(settings, day, 1, detectors=range(0, 200)))

    async def waited_twice() -> bool:
        history = await handle.fetch_history()
        return sum(1 for e in history.events if e.HasField("timer_fired_event_attributes")) >= 2

    await poll_until(waited_twice, timeout=120, what="two rounds of waiting for raws")
    seed_exposure(settings, day, 1)
    await handle.result()
    await _save(handle, "exposure-waited-for-raws")


async def _record_failed(settings: Settings, client: Client) -> None:
    """A zip of other content at the destination: DestinationConflict."""
    seeded = seed_exposure(settings, fresh_day(), 1)
    plant_foreign_zip(settings.dest_root / "LSSTCam" / str(seeded.day_obs) / f"{seeded.obs_id}.zip")
    handle = await _start(settings, client, seeded)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    await _save(handle, "exposure-failed-destination-conflict")


async def _record_select_and_start(settings: Settings, client: Client) -> None:
    """One run of the schedule's action: it finds the exposures above and starts none twice."""
    seed_exposure(settings, fresh_day(), 1)
    handle = await client.start_workflow(
        names.SELECT_WORKFLOW,
        SelectInput(queue=selection_queue(settings), window_s=80 * 3600.0, lookback_s=30 * 365 * 86400.0),
        id=f"{names.schedule_id('LSSTCam')}-recorded",
        task_queue=settings.workflow_task_queue,
        result_type=SelectResult,
    )
    result = await handle.result()
    assert result.started >= 1
    await _save(handle, "select-and-start")


@pytest.mark.skipif(not LABEL, reason="set UNEMBARGO_RECORD_HISTORIES=<label> to record histories")
async def test_record_histories(settings: Settings, client: Client, worker: WorkerProcess) -> None:
    await _record_completed(settings, client)
    await _record_waited_for_raws(settings, client)
    await _record_failed(settings, client)
    await _record_select_and_start(settings, client)
    assert worker.alive(), worker.output()[-3000:]


# ---------------------------------------------------------------- replaying


def recorded() -> list[Path]:
    return sorted(HISTORIES.glob("*/*.json"))


def history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


@pytest.mark.parametrize("path", recorded(), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_history_replays_on_todays_code(path: Path) -> None:
    await Replayer(workflows=[ExposureWorkflow, SelectAndStartWorkflow]).replay_workflow(history(path))


@workflow.defn(name=names.EXPOSURE_WORKFLOW)
class ExportBeforeZip(ExposureWorkflow):
    """A broken change: export scheduled before zip."""

    @workflow.run
    async def run(self, inp: ExposureInput) -> ExposureState:
        await self._step(inp, "export", StepInput(inp.exposure), ExportReceipt)
        return await super().run(inp)


@workflow.defn(name=names.EXPOSURE_WORKFLOW)
class WaitingWithoutPatch(ExposureWorkflow):
    """The "waiting" step as it would be without ``workflow.patched``."""

    @workflow.run
    async def run(self, inp: ExposureInput) -> ExposureState:
        return await super().run(inp)

    def _mark_waiting(self) -> None:
        workflow.upsert_search_attributes([SA_STEP.value_set(names.STEP_WAITING)])


async def _replay_with(workflow_class: type, path: Path) -> None:
    # Unsandboxed: the sandbox would re-import this test module to load the class.
    replayer = Replayer(workflows=[workflow_class], workflow_runner=UnsandboxedWorkflowRunner())
    await replayer.replay_workflow(history(path))


async def test_reordered_steps_fail_replay() -> None:
    with pytest.raises(NondeterminismError):
        await _replay_with(ExportBeforeZip, HISTORIES / "v1" / "exposure-completed.json")


async def test_waiting_step_needs_its_patch_for_runs_recorded_before_it() -> None:
    before = HISTORIES / "v1" / "exposure-waited-for-raws.json"
    await _replay_with(ExposureWorkflow, before)
    with pytest.raises(NondeterminismError):
        await _replay_with(WaitingWithoutPatch, before)
