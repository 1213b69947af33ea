"""Bad input that is fixed while the workflow runs, and outages, on the real stack.

Each case ends with the exposure unembargoed once the cause is gone. The catalogue of
bad inputs and their named errors is test_bad_input_catalogue.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from support import WorkerProcess, fresh_day, poll_until, start_one
from unembargo.devstack import postgres, rucio_server
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models.exposure import Policy
from unembargo.models.settings import Settings
from verify import check_unembargoed

FAST = Policy(heartbeat_s=5, incomplete_wait_s=8, incomplete_poll_s=2)


@pytest.fixture
async def start(settings: Settings, client: Client, worker: WorkerProcess) -> AsyncIterator:  # type: ignore[type-arg]
    """Start one exposure's workflow with short timers; returns its handle."""

    async def run(seeded: SeededExposure, policy: Policy = FAST) -> WorkflowHandle[object, object]:
        return await start_one(client, settings, seeded, policy)

    yield run
    assert worker.alive(), worker.output()[-3000:]


async def test_incomplete_exposure_completes_when_the_raws_arrive(settings: Settings, start) -> None:  # type: ignore[no-untyped-def]
    day = fresh_day()
    partial = seed_exposure(settings, day, 1, detectors=range(0, 200))
    handle = await start(partial, Policy(heartbeat_s=5, incomplete_wait_s=300, incomplete_poll_s=2))
    await poll_until(lambda: _waiting(handle), timeout=60, what="the workflow to wait for raws")
    full = seed_exposure(settings, day, 1)
    await handle.result()
    check_unembargoed(settings, day, full.obs_id, full.exposure_id, list(full.tracts))


async def _waiting(handle: WorkflowHandle[object, object]) -> bool:
    state = await handle.query("state")
    return bool(state["waiting_for"])


async def test_rucio_down_for_30s_during_register_delays_then_completes(
    settings: Settings,
    stack_up: Settings,
    start,  # type: ignore[no-untyped-def]
) -> None:
    seeded = seed_exposure(settings, fresh_day(), 1)
    # Hold the exposure before step 4 by taking Rucio down as soon as step 3 runs.
    handle = await start(seeded)
    await poll_until(lambda: _at_step(handle, "ingest"), timeout=120, what="step ingest")
    assert rucio_server.stop(stack_up)
    try:
        await poll_until(lambda: _retrying(handle), timeout=120, what="register to be retried")
        await asyncio.sleep(30)  # the outage itself, not a wait for state
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    finally:
        rucio_server.ensure(stack_up, postgres.url(stack_up))
    await handle.result()
    check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))


async def _at_step(handle: WorkflowHandle[object, object], step: str) -> bool:
    state = await handle.query("state")
    return state["current"] == step or state["steps"][step]["done"]


async def _retrying(handle: WorkflowHandle[object, object]) -> bool:
    """True once the register activity has failed at least once and is pending a retry."""
    desc = await handle.describe()
    pending = desc.raw_description.pending_activities
    return any(p.activity_type.name == "register_in_rucio" and p.attempt > 1 for p in pending)
