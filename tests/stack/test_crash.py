"""Crash safety: a worker SIGKILLed at every step, while acting and just after acting.

Workers armed to kill themselves (SIGKILL, no cleanup) at each of the ten points, once
each, serve two exposures at once: one on locations whose workers die at the
destination's steps (zip, export, ingest), one on locations whose workers die at Rucio's
(register, tag). Two armed workers serve each pair of locations, so after every kill the
other takes over (once the heartbeat times out) while the killed one is replaced. Each
exposure must end unembargoed with every side effect done exactly once.
"""

from __future__ import annotations

import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from support import WorkerProcess, effects, fresh_day, location_row, poll_until, seed_small
from unembargo.devstack.seed import SeededExposure
from unembargo.engine.starter import start_exposures
from unembargo.models.exposure import STEPS, Exposure, Policy
from unembargo.models.flow import location_kinds, steps_at
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, step_queues, upsert_location
from verify import check_unembargoed

POINTS = [f"{step}:{point}" for step in STEPS for point in ("acting", "acted")]
# Short heartbeats so a killed activity is retried within seconds.
FAST = Policy(heartbeat_s=5)
# Armed workers per pair of locations: the survivor of a kill takes over at once.
WORKERS = 2


@dataclass
class Armed:
    """One exposure on locations of its own, whose workers die at the points of some steps."""

    points: list[str]
    locations: list[str]
    seeded: SeededExposure
    handle: WorkflowHandle[object, object]
    workers: list[WorkerProcess] = field(default_factory=list)
    kills: int = 0


def _locations(settings: Settings, label: str) -> dict[str, str]:
    """An archive and a Rucio location of their own; operation -> name.

    Inactive: the run is started with their queues explicitly, and no later test of the
    session may have its steps routed to them once their workers are gone."""
    tag = uuid.uuid4().hex[:8]
    found = {}
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for kind in location_kinds(STEPS):
            name = f"crash-{label}-{kind}-{tag}"
            upsert_location(session, location_row(settings, kind, name, "crash", active=False))
            found[kind] = name
    return found


async def _arm(client: Client, settings: Settings, kind: str, day: int, seq: int) -> Armed:
    """An exposure started on locations whose workers die at the points of ``kind``'s steps."""
    seeded = seed_small(settings, day, seq)
    locations = _locations(settings, kind)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session, at=list(locations.values()))
    exposure = Exposure("LSSTCam", seeded.day_obs, seeded.obs_id, seeded.exposure_id)
    [out] = await start_exposures(client, settings.workflow_task_queue, [exposure], queues, FAST)
    assert out.outcome == "started"
    points = [p for p in POINTS if p.partition(":")[0] in steps_at(STEPS, kind)]
    return Armed(points, list(locations.values()), seeded, client.get_workflow_handle(out.workflow_id))


async def test_worker_killed_at_every_step_and_point_finishes_exactly_once(
    settings: Settings, client: Client, tmp_path: Path
) -> None:
    """Crash safety: a worker killed while acting or just after acting, at every step, never
    duplicates, corrupts or skips a side effect; the run resumes on a live worker and completes."""
    day = fresh_day()
    runs = [await _arm(client, settings, kind, day, seq) for seq, kind in enumerate(location_kinds(STEPS), 1)]
    markers = {"UNEMBARGO_CRASH_MARKERS": str(tmp_path)}

    try:
        while not all([await _closed(run.handle) for run in runs]):
            for run in runs:
                for dead in [w for w in run.workers if not w.alive()]:
                    run.workers.remove(dead)
                    assert dead.proc.returncode == -signal.SIGKILL, dead.output()[-3000:]
                    run.kills += 1
                assert run.kills <= len(run.points)
                env = {**markers, "UNEMBARGO_CRASH_AT": ",".join(run.points)}
                run.workers += [
                    WorkerProcess(settings, run.locations, env) for _ in range(WORKERS - len(run.workers))
                ]
            await poll_until(lambda: _ended(runs), timeout=240, what="a kill or the end of the workflows")
    finally:
        for run in runs:
            for worker in run.workers:
                worker.stop()
    # A kill in the last instants, not yet reaped by the loop.
    for run in runs:
        run.kills += sum(1 for w in run.workers if w.proc.returncode == -signal.SIGKILL)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.replace(":", "-") for p in POINTS)
    for run in runs:
        assert (await run.handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert run.kills == len(run.points), (run.points, run.kills)
        seeded = run.seeded
        check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))
        ledger = effects(settings, {seeded.obs_id})
        assert {step for (_, step, _) in ledger} == set(STEPS)
        assert all(n == 1 for n in ledger.values()), ledger


async def _ended(runs: list[Armed]) -> bool:
    """A worker died, or every workflow closed."""
    if any(not w.alive() for run in runs for w in run.workers):
        return True
    return all([await _closed(run.handle) for run in runs])


async def _closed(handle: WorkflowHandle[object, object]) -> bool:
    return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING
