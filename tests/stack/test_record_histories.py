"""Recording the histories that tests/unit/test_replay.py replays: real runs on the real stack.

``UNEMBARGO_RECORD_HISTORIES=<label> pytest tests/stack/test_record_histories.py`` writes
``tests/histories/<label>/*.json`` with the workflow code of its time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from support import WorkerProcess, fresh_day, plant_foreign_zip, poll_until, start_one
from unembargo.client.schedule import selection_queue
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models import names
from unembargo.models.exposure import Policy
from unembargo.models.schedule import SelectInput, SelectResult
from unembargo.models.settings import Settings

HISTORIES = Path(__file__).parents[1] / "histories"
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
    """Records real runs' histories (completed, waited for raws, failed, select-and-start) for
    tests/unit/test_replay.py."""
    await _record_completed(settings, client)
    await _record_waited_for_raws(settings, client)
    await _record_failed(settings, client)
    await _record_select_and_start(settings, client)
    assert worker.alive(), worker.output()[-3000:]
