"""``unembargo retry``: run a failed exposure again, or move a stuck one on now.

- Failed (or terminated, canceled, timed out): a new run with the same workflow id,
  the exposure from the failed run's input, today's locations and policy. Steps
  already done are found done by their check-first activities and not redone.
- Stuck (running, its current activity failing and being retried): a Temporal
  reset to the workflow task that scheduled that activity. The new run keeps the
  history up to there, so the steps already done are not run at all (not even
  checked), and the failing step starts again at once with attempt 1 instead of
  after its backoff. Fix the cause first: a reset does not fix anything by itself.
- Running normally, waiting for raws, or completed: nothing to do; the reason is said.

    >>> asyncio.run(retry_exposure(client, settings, "LSSTCam", "MC_O_20251231_000010"))  # doctest: +SKIP
    RetryOutcome(workflow_id='unembargo-LSSTCam-MC_O_20251231_000010', action='reset', ...)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlmodel import Session
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client

from unembargo.client.status import ExposureStatus, exposure_status
from unembargo.engine.starter import settings_policy, start_exposures
from unembargo.models.exposure import ExposureInput
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.tables import step_queues


@dataclass(frozen=True)
class RetryOutcome:
    workflow_id: str
    action: str  # restarted | reset | none
    run_id: str | None
    message: str


async def retry_exposure(
    client: Client, settings: Settings, instrument: str, obs_id: str, reason: str = "unembargo retry"
) -> RetryOutcome:
    """Restart a failed exposure, reset a stuck one, or say why there is nothing to retry."""
    now = await exposure_status(client, instrument, obs_id)
    if now.status == "running":
        if now.stuck:
            return await reset_to_failing_step(client, now, reason)
        return RetryOutcome(now.workflow_id, "none", None, _why_not(now))
    if now.status == "completed":
        return RetryOutcome(now.workflow_id, "none", None, "completed: nothing to retry")
    return await restart(client, settings, now)


def _why_not(now: ExposureStatus) -> str:
    if now.waiting_for:
        return f"waiting for its raws ({now.waiting_for}); it checks again on its own"
    if now.pending:
        return (
            f"running step {now.pending.step} (attempt {now.pending.attempt}), not failing: nothing to retry"
        )
    return f"running at step {now.step}: nothing to retry"


async def reset_to_failing_step(client: Client, now: ExposureStatus, reason: str) -> RetryOutcome:
    """Reset a running run to the workflow task that scheduled its failing activity."""
    assert now.pending is not None
    handle = client.get_workflow_handle(now.workflow_id, run_id=now.run_id)
    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_id == now.pending.activity_id
    ]
    if not scheduled:
        raise RuntimeError(f"{now.workflow_id}: no scheduled event for activity {now.pending.activity_id}")
    resp = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=now.workflow_id, run_id=now.run_id),
            reason=reason,
            workflow_task_finish_event_id=scheduled[-1].workflow_task_completed_event_id,
            request_id=str(uuid.uuid4()),
        )
    )
    done = [s.step for s in now.steps if s.done]
    return RetryOutcome(
        now.workflow_id,
        "reset",
        resp.run_id,
        f"reset to step {now.pending.step} (was at attempt {now.pending.attempt}); "
        f"kept done: {', '.join(done) or 'none'}",
    )


async def restart(client: Client, settings: Settings, now: ExposureStatus) -> RetryOutcome:
    """A new run of a closed, unsuccessful exposure, for the same exposure."""
    handle = client.get_workflow_handle(now.workflow_id, run_id=now.run_id)
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [inp] = await client.data_converter.decode(list(started.input.payloads), [ExposureInput])
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    [out] = await start_exposures(
        client,
        settings.workflow_task_queue,
        [inp.exposure],
        queues,
        settings_policy(settings),
        restart_failed=True,
    )
    if out.outcome != "started":
        return RetryOutcome(now.workflow_id, "none", None, f"not restarted: its workflow is {out.outcome}")
    run_id = (await client.get_workflow_handle(now.workflow_id).describe()).run_id
    done = [s.step for s in now.steps if s.done]
    return RetryOutcome(
        now.workflow_id,
        "restarted",
        run_id,
        f"new run after a {now.status} one ({now.error_type or 'no error type'}); "
        f"steps found done again: {', '.join(done) or 'none'}",
    )
