"""``unembargo schedule`` on the real stack: the schedule starts the due exposures,
runs again without starting any twice, pauses, runs once by hand, and is deleted.

The module has its own bucket, butlers, database and namespace (``module_settings``):
the schedule selects everything due there, and must find only this module's exposures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from support import WorkerProcess, add_locations, effects, fresh_day, location_names, poll_until, seed_small
from unembargo.client import schedule
from unembargo.devstack import lsstcam
from unembargo.devstack.seed import SeededExposure
from unembargo.engine.connection import connect
from unembargo.models import names
from unembargo.models.settings import Settings
from verify import check_unembargoed

INSTRUMENT = "LSSTCam"


@pytest.fixture(scope="module")
def own(module_settings: Settings) -> Settings:
    """The module's settings, with its two locations in its own database."""
    add_locations(module_settings, "test")
    return module_settings.model_copy(update={"otel_exporter": "none"})


@pytest.fixture(scope="module")
def worker(own: Settings) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(own, location_names(own))
    yield proc
    proc.stop()


def cli(settings: Settings, *args: str) -> str:
    """Run ``unembargo schedule ARGS`` as an operator would; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", "schedule", *args],
        env={**os.environ, **settings.environment()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def _runs(client: Client, seeded: SeededExposure) -> list[WorkflowExecutionStatus | None]:
    """Status of every run of the exposure's workflow id."""
    wid = names.workflow_id(INSTRUMENT, seeded.obs_id)
    return [e.status async for e in client.list_workflows(f'WorkflowId = "{wid}"')]


async def _completed(client: Client, exposures: list[SeededExposure]) -> bool:
    for seeded in exposures:
        if await _runs(client, seeded) != [WorkflowExecutionStatus.COMPLETED]:
            return False
    return True


async def _actions(client: Client) -> int:
    return (await schedule.describe(client, INSTRUMENT)).actions


async def test_schedule_starts_due_exposures_pauses_triggers_and_deletes(
    own: Settings, worker: WorkerProcess
) -> None:
    """A real Temporal Schedule made by `unembargo schedule` starts the due exposures once each, skips
    recent ones, pauses, triggers by hand and is deleted."""
    client = await connect(own)
    day = fresh_day()
    due = [seed_small(own, day, seq) for seq in (1, 2)]
    # Ends today: not past the 80 h window, so never selected.
    recent = seed_small(own, lsstcam.day_obs_of(datetime.now(UTC)), 1)

    cli(own, "create", "--every", "2s", "--window", "80h", "--lookback", "10950d")
    try:
        await poll_until(lambda: _completed(client, due), timeout=240, what="the schedule to unembargo both")
        # Later runs select both again and start neither twice.
        seen = await _actions(client)
        await poll_until(lambda: _more_than(client, seen + 1), timeout=60, what="two more scheduled runs")
        assert await _completed(client, due)
        assert await _runs(client, recent) == []

        listed = json.loads(cli(own, "list", "--json"))
        assert [s["id"] for s in listed] == [names.schedule_id(INSTRUMENT)]
        assert (listed[0]["overlap"], listed[0]["catchup_window_s"]) == ("SKIP", 86400.0)
        assert (listed[0]["every"], listed[0]["window_s"]) == ([2.0], 80 * 3600.0)

        cli(own, "pause", "--note", "test pause")
        paused = await schedule.describe(client, INSTRUMENT)
        assert (paused.paused, paused.note) == (True, "test pause")

        late = seed_small(own, day, 3)
        cli(own, "trigger")
        await poll_until(lambda: _completed(client, [late]), timeout=120, what="the triggered run")
        # Paused: the trigger was the only run since.
        assert await _actions(client) == paused.actions + 1
    finally:
        cli(own, "delete")

    with pytest.raises(RPCError) as gone:
        await schedule.describe(client, INSTRUMENT)
    assert gone.value.status == RPCStatusCode.NOT_FOUND
    for seeded in [*due, late]:
        check_unembargoed(own, day, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))
    ledger = effects(own, {s.obs_id for s in [*due, late]})
    assert ledger and all(n == 1 for n in ledger.values()), ledger
    assert worker.alive(), worker.output()[-3000:]


async def _more_than(client: Client, actions: int) -> bool:
    return await _actions(client) > actions
