"""Crash safety: a worker SIGKILLed at every step, while acting and just after acting.

One exposure runs while its worker is armed to kill itself (SIGKILL, no cleanup)
at each of the ten points, once each. After every kill a fresh worker takes over.
The exposure must end unembargoed with every side effect done exactly once.
"""

from __future__ import annotations

import signal
from functools import partial
from pathlib import Path

from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from support import WorkerProcess, effects, fresh_day, poll_until
from unembargo.devstack.seed import seed_exposure
from unembargo.engine.starter import start_exposures
from unembargo.models.exposure import STEPS, Exposure, Policy
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, step_queues
from verify import check_unembargoed

POINTS = [f"{step}:{point}" for step in STEPS for point in ("acting", "acted")]
# Short heartbeats so a killed activity is retried within seconds.
FAST = Policy(heartbeat_s=5)


async def test_worker_killed_at_every_step_and_point_finishes_exactly_once(
    settings: Settings, locations: list[str], client: Client, tmp_path: Path
) -> None:
    seeded = seed_exposure(settings, fresh_day(), 1)
    exposure = Exposure("LSSTCam", seeded.day_obs, seeded.obs_id, seeded.exposure_id)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    [outcome] = await start_exposures(client, settings.workflow_task_queue, [exposure], queues, FAST)
    assert outcome.outcome == "started"
    handle = client.get_workflow_handle(outcome.workflow_id)
    crash_env = {"UNEMBARGO_CRASH_AT": ",".join(POINTS), "UNEMBARGO_CRASH_MARKERS": str(tmp_path)}

    kills = 0
    while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        worker = WorkerProcess(settings, locations, crash_env)
        try:
            await poll_until(
                partial(_ended, worker, handle), timeout=240, what="a kill or the end of the workflow"
            )
        finally:
            if worker.alive():
                worker.stop()
        if worker.proc.returncode == -signal.SIGKILL:
            kills += 1
        assert kills <= len(POINTS), worker.output()[-3000:]

    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.replace(":", "-") for p in POINTS)
    assert kills == len(POINTS)
    check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))
    ledger = effects(settings, {seeded.obs_id})
    assert {step for (_, step, _) in ledger} == set(STEPS)
    assert all(n == 1 for n in ledger.values()), ledger


async def _ended(worker: WorkerProcess, handle: WorkflowHandle[object, object]) -> bool:
    return not worker.alive() or await _closed(handle)


async def _closed(handle: WorkflowHandle[object, object]) -> bool:
    return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING
