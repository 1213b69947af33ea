"""``unembargo status`` and ``unembargo retry`` on the real stack.

- Stuck: register fails over and over (its worker reaches no Rucio). Status shows the
  three done steps, the pending activity, its attempt and last failure; once Rucio is
  reachable, retry resets the run to register, keeping zip, export and ingest.
- Failed: a conflicting zip fails the run. Status shows the error; once the zip is
  moved aside, retry starts a new run that completes.
- Waiting for raws: status says so, the `step` search attribute is "waiting", and
  retry has nothing to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from temporalio.client import Client, WorkflowHandle

from support import (
    SMALL,
    WorkerProcess,
    effects,
    fresh_day,
    plant_foreign_zip,
    poll_until,
    seed_small,
    start_one,
)
from unembargo.client.retry import retry_exposure
from unembargo.client.status import ExposureStatus, exposure_status
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models.exposure import Policy
from unembargo.models.names import SA_STEP, STEP_WAITING
from unembargo.models.settings import Settings
from verify import check_unembargoed

FAST = Policy(heartbeat_s=5, incomplete_wait_s=600, incomplete_poll_s=2)
# Checks again only after the test: each check runs zip, and shows "zip" while it runs.
WAITING_LONG = Policy(heartbeat_s=5, incomplete_wait_s=3600, incomplete_poll_s=600)
# Nothing listens there: every Rucio call of that worker fails, as when Rucio is down.
NO_RUCIO = {"UNEMBARGO_RUCIO_HOST": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def dest_worker(settings: Settings, locations: list[str]) -> Iterator[WorkerProcess]:
    """Serves the workflows and the destination location; Rucio's location is up to each test."""
    proc = WorkerProcess(settings, [locations[0]])
    yield proc
    proc.stop()


@pytest.fixture
def rucio_worker(settings: Settings, locations: list[str]) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(settings, [locations[1]])
    yield proc
    proc.stop()


def cli(settings: Settings, *args: str) -> tuple[int, str]:
    """Run ``unembargo ARGS`` as an operator would; exit code and stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", *args],
        env={**os.environ, **settings.environment(), "UNEMBARGO_OTEL_EXPORTER": "none"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout


async def start(settings: Settings, client: Client, seeded: SeededExposure) -> WorkflowHandle[object, object]:
    return await start_one(client, settings, seeded, FAST)


def done_steps(status: ExposureStatus) -> list[str]:
    return [s.step for s in status.steps if s.done]


async def test_stuck_exposure_shows_its_failing_step_and_retry_resets_to_it(
    settings: Settings, client: Client, locations: list[str], dest_worker: WorkerProcess
) -> None:
    """`unembargo status` shows a run stuck at register (pending attempt, last failure) on the real
    server; `retry` resets to register, keeping earlier steps."""
    seeded = seed_small(settings, fresh_day(), 1)
    broken = WorkerProcess(settings, [locations[1]], env=NO_RUCIO)
    try:
        first = await start(settings, client, seeded)

        async def stuck() -> bool:
            now = await exposure_status(client, "LSSTCam", seeded.obs_id)
            return now.stuck and now.pending is not None and now.pending.step == "register"

        await poll_until(stuck, timeout=180, what="register to fail and be retried")
    finally:
        broken.stop()

    code, out = cli(settings, "status", seeded.obs_id, "--json")
    assert code == 0
    shown = json.loads(out)
    assert (shown["status"], shown["step"], shown["stuck"]) == ("running", "register", True)
    assert [s["step"] for s in shown["steps"] if s["done"]] == ["zip", "export", "ingest"]
    assert shown["steps"][0]["summary"].startswith(f"LSSTCam/{seeded.day_obs}/{seeded.obs_id}.zip (")
    assert shown["pending"]["activity"] == "register_in_rucio" and shown["pending"]["attempt"] >= 2
    assert shown["pending"]["last_failure"]

    code, out = cli(settings, "retry", seeded.obs_id, "--json")
    assert code == 0, out
    outcome = json.loads(out)
    assert outcome["action"] == "reset" and outcome["run_id"] != shown["run_id"]

    good = WorkerProcess(settings, [locations[1]])
    try:
        await client.get_workflow_handle(first.id).result()
    finally:
        good.stop()
    after = await exposure_status(client, "LSSTCam", seeded.obs_id)
    assert (after.run_id, after.status) == (outcome["run_id"], "completed")
    # The reset run kept the first run's zip, export and ingest: same times, not run again.
    kept = {s["step"]: s["when"] for s in shown["steps"] if s["done"]}
    assert {s.step: s.when.isoformat() for s in after.steps if s.step in kept and s.when} == kept
    check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))
    ledger = effects(settings, {seeded.obs_id})
    assert ledger and all(n == 1 for n in ledger.values()), ledger


async def test_failed_exposure_is_restarted_by_retry_and_then_has_nothing_to_retry(
    settings: Settings, client: Client, dest_worker: WorkerProcess, rucio_worker: WorkerProcess
) -> None:
    """`status` shows a failed run's named error; once fixed, `retry` starts a new run that completes;
    then there is nothing to retry."""
    seeded = seed_small(settings, fresh_day(), 1)
    path = settings.dest_root / "LSSTCam" / str(seeded.day_obs) / f"{seeded.obs_id}.zip"
    plant_foreign_zip(path)
    handle = await start(settings, client, seeded)
    await poll_until(lambda: _closed(handle), timeout=120, what="the run to fail")

    failed = await exposure_status(client, "LSSTCam", seeded.obs_id)
    assert (failed.status, failed.step, failed.error_type) == ("failed", "zip", "DestinationConflict")
    assert failed.steps[0].last_failure and "DestinationConflict" in failed.steps[0].last_failure
    code, out = cli(settings, "status", seeded.obs_id)
    assert code == 0 and "DestinationConflict" in out and f"unembargo retry {seeded.obs_id}" in out

    path.unlink()
    outcome = await retry_exposure(client, settings, "LSSTCam", seeded.obs_id)
    assert outcome.action == "restarted" and outcome.run_id != failed.run_id
    await client.get_workflow_handle(handle.id).result()
    check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))

    code, out = cli(settings, "retry", seeded.obs_id)
    assert code == 1 and "nothing to retry" in out


async def test_exposure_waiting_for_raws_shows_waiting_and_has_nothing_to_retry(
    settings: Settings, client: Client, dest_worker: WorkerProcess
) -> None:
    # Two of the three raws of a small exposure are in the bucket.
    """The real zip's IncompleteExposure reaches the workflow under its name through a real worker: the
    server's `step` search attribute says waiting, status says why, retry does nothing."""
    seeded = seed_exposure(settings, fresh_day(), 1, detectors=SMALL[:2], expected=SMALL, file_size=8 * 1024)
    handle = await start_one(client, settings, seeded, WAITING_LONG)
    try:

        async def waiting() -> bool:
            desc = await handle.describe()
            return desc.typed_search_attributes.get(SA_STEP) == STEP_WAITING

        await poll_until(waiting, timeout=60, what="the step search attribute to say waiting")
        now = await exposure_status(client, "LSSTCam", seeded.obs_id)
        assert now.status == "running" and now.waiting_for and "2 of 3" in now.waiting_for
        outcome = await retry_exposure(client, settings, "LSSTCam", seeded.obs_id)
        assert outcome.action == "none" and "waiting for its raws" in outcome.message
        code, out = cli(settings, "status", "--day", str(seeded.day_obs), "--json")
        assert code == 0 and json.loads(out)[seeded.obs_id]["step"] == STEP_WAITING
    finally:
        await handle.terminate("test over")


async def _closed(handle: WorkflowHandle[object, object]) -> bool:
    return (await handle.describe()).close_time is not None
