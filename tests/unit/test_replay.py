"""Safe deploys: recorded histories of real runs must replay on today's workflow code.

Each ``tests/histories/<label>/*.json`` is the full history of a run on the real
stack, recorded by ``tests/stack/test_record_histories.py`` with the workflow code of its time
(``UNEMBARGO_RECORD_HISTORIES=<label> pytest tests/stack/test_record_histories.py``). A change
that would break such a run in flight fails here; the fix is ``workflow.patched``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from unembargo.models import names
from unembargo.models.exposure import ExposureInput, ExposureState, Step, StepInput
from unembargo.models.names import SA_STEP
from unembargo.workflows.exposure import ExposureWorkflow
from unembargo.workflows.select import SelectAndStartWorkflow

HISTORIES = Path(__file__).parents[1] / "histories"


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
        await self._step(inp, Step.EXPORT, StepInput(inp.exposure))
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
