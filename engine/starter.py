"""Start one exposure workflow per exposure, never twice.

The workflow id is derived from the exposure, and a start is refused when a run
with that id exists (running, completed or failed): such exposures are reported
with their state instead. If any exposure or queue has an unsafe name, nothing
starts (``names.InvalidName``). Failed ones are restarted only on request
(``restart_failed``, ``unembargo start --restart-failed``), and completed ones
only when ``rerun_completed`` says so (``unembargo reconcile --repair``, for an
exposure whose work was undone after its run completed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from unembargo.models import names
from unembargo.models.exposure import Exposure, ExposureInput, Policy, StepQueues, check_input
from unembargo.models.settings import Settings

# Starts in flight at once: enough to hide round trips, few enough for a dev server.
START_CONCURRENCY = 16


@dataclass(frozen=True)
class StartOutcome:
    """What happened to one exposure: started, or the state of its existing run."""

    exposure: Exposure
    workflow_id: str
    outcome: str  # started | running | completed | failed | terminated | ...


async def _start_one(
    client: Client,
    task_queue: str,
    exposure: Exposure,
    queues: StepQueues,
    policy: Policy,
    reuse: WorkflowIDReusePolicy,
) -> StartOutcome:
    wid = names.workflow_id(exposure.instrument, exposure.obs_id)
    try:
        await client.start_workflow(
            names.EXPOSURE_WORKFLOW,
            ExposureInput(exposure, queues, policy),
            id=wid,
            task_queue=task_queue,
            id_reuse_policy=reuse,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=names.exposure_search_attributes(
                exposure.instrument, exposure.day_obs, exposure.obs_id, names.STEP_QUEUED
            ),
        )
    except WorkflowAlreadyStartedError:
        desc = await client.get_workflow_handle(wid).describe()
        status = desc.status or WorkflowExecutionStatus.RUNNING
        return StartOutcome(exposure, wid, status.name.lower())
    return StartOutcome(exposure, wid, "started")


async def start_exposures(
    client: Client,
    task_queue: str,
    exposures: Iterable[Exposure],
    queues: StepQueues,
    policy: Policy | None = None,
    restart_failed: bool = False,
    rerun_completed: bool = False,
) -> list[StartOutcome]:
    """Start a workflow for each exposure that has none; report the others.

    ``restart_failed`` also starts a new run where the last one failed (or was
    terminated, canceled, timed out); ``rerun_completed`` where it completed too.
    A running workflow is never started twice.
    """
    gate = asyncio.Semaphore(START_CONCURRENCY)
    policy = policy or Policy()
    exposures = list(exposures)
    # The workflow checks its input too; checking all first starts nothing if one name is bad.
    for exp in exposures:
        check_input(ExposureInput(exp, queues, policy))
    reuse = _reuse_policy(restart_failed, rerun_completed)

    async def one(exp: Exposure) -> StartOutcome:
        async with gate:
            return await _start_one(client, task_queue, exp, queues, policy, reuse)

    return list(await asyncio.gather(*(one(e) for e in exposures)))


def _reuse_policy(restart_failed: bool, rerun_completed: bool) -> WorkflowIDReusePolicy:
    """Which closed runs a new start of the same id may follow."""
    if rerun_completed:
        return WorkflowIDReusePolicy.ALLOW_DUPLICATE
    if restart_failed:
        return WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
    return WorkflowIDReusePolicy.REJECT_DUPLICATE


def settings_policy(settings: Settings) -> Policy:
    """The workflow policy the settings ask for."""
    return Policy(
        heartbeat_s=settings.heartbeat_timeout.total_seconds(),
        incomplete_wait_s=settings.incomplete_wait.total_seconds(),
        incomplete_poll_s=settings.incomplete_poll.total_seconds(),
    )
