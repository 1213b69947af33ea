"""Bad input and outages through the whole workflow, on the real stack.

Each case ends with a named error that says what is wrong (nothing lost, nothing
overwritten), or with the exposure unembargoed once the cause is gone.
"""

from __future__ import annotations

import asyncio
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from support import WorkerProcess, fresh_day, plant_foreign_zip, poll_until, start_one
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


async def failure(handle: WorkflowHandle[object, object]) -> ApplicationError:
    """The named error a workflow failed with."""
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


def zip_path(settings: Settings, seeded: SeededExposure) -> Path:
    return settings.dest_root / "LSSTCam" / str(seeded.day_obs) / f"{seeded.obs_id}.zip"


async def test_incomplete_exposure_waits_then_fails_and_zips_nothing(settings: Settings, start) -> None:  # type: ignore[no-untyped-def]
    seeded = seed_exposure(settings, fresh_day(), 1, detectors=range(0, 150))
    began = time.monotonic()
    error = await failure(await start(seeded))
    assert error.type == "IncompleteExposure"
    assert "150" in error.message and "205" in error.message, error.message
    assert time.monotonic() - began >= FAST.incomplete_wait_s
    assert not zip_path(settings, seeded).parent.exists() or not any(
        zip_path(settings, seeded).parent.iterdir()
    )


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


async def test_existing_zip_with_other_content_is_a_named_error_and_untouched(
    settings: Settings,
    start,  # type: ignore[no-untyped-def]
) -> None:
    seeded = seed_exposure(settings, fresh_day(), 1)
    path = zip_path(settings, seeded)
    plant_foreign_zip(path)
    before = path.read_bytes(), path.stat().st_mtime_ns
    error = await failure(await start(seeded))
    assert error.type == "DestinationConflict"
    assert str(path.name) in error.message
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


async def test_keys_with_spaces_and_unicode_are_zipped(settings: Settings, start) -> None:  # type: ignore[no-untyped-def]
    odd = {"notes from the night.txt": b"seeing 0.7", "résumé-Ωmega.json": b"{}", "sub dir/ü.json": b"[]"}
    seeded = seed_exposure(settings, fresh_day(), 1, extra_objects=odd)
    await (await start(seeded)).result()
    check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))
    with zipfile.ZipFile(zip_path(settings, seeded)) as zf:
        assert set(odd) <= set(zf.namelist())
        assert zf.read("résumé-Ωmega.json") == b"{}"


async def test_key_that_would_escape_the_destination_is_refused(settings: Settings, start) -> None:  # type: ignore[no-untyped-def]
    seeded = seed_exposure(settings, fresh_day(), 1, extra_objects={"../../../escape.json": b"{}"})
    error = await failure(await start(seeded))
    assert error.type == "UnsafeKey"
    assert not zip_path(settings, seeded).exists()
    assert not list(settings.dest_root.parent.rglob("escape.json"))


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
