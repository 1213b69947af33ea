"""Start one exposure workflow per exposure, never twice.

The workflow id is derived from the exposure, and a start is refused when a run
with that id exists (running, completed or failed): such exposures are reported
with their state instead. Failed ones are restarted only on request
(``restart_failed``, ``unembargo start --restart-failed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from unembargo.models import names
from unembargo.models.exposure import Exposure, ExposureInput, Policy, StepQueues
from unembargo.workflows.exposure import SA_DAY_OBS, SA_INSTRUMENT, SA_OBS_ID, SA_STEP

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
    restart_failed: bool,
) -> StartOutcome:
    wid = names.workflow_id(exposure.instrument, exposure.obs_id)
    reuse = (
        WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
        if restart_failed
        else WorkflowIDReusePolicy.REJECT_DUPLICATE
    )
    try:
        await client.start_workflow(
            names.EXPOSURE_WORKFLOW,
            ExposureInput(exposure, queues, policy),
            id=wid,
            task_queue=task_queue,
            id_reuse_policy=reuse,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_INSTRUMENT, exposure.instrument),
                    SearchAttributePair(SA_DAY_OBS, exposure.day_obs),
                    SearchAttributePair(SA_OBS_ID, exposure.obs_id),
                    SearchAttributePair(SA_STEP, "queued"),
                ]
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
) -> list[StartOutcome]:
    """Start a workflow for each exposure that has none; report the others."""
    gate = asyncio.Semaphore(START_CONCURRENCY)
    policy = policy or Policy()

    async def one(exp: Exposure) -> StartOutcome:
        async with gate:
            return await _start_one(client, task_queue, exp, queues, policy, restart_failed)

    return list(await asyncio.gather(*(one(e) for e in exposures)))
