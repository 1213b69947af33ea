"""Exposure workflows as seen now: watch some until they finish, or list a day's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus, WorkflowFailureError

from unembargo.engine.codec import failure_text
from unembargo.engine.connection import riding_out
from unembargo.models import names
from unembargo.models.names import SA_OBS_ID, SA_STEP
from unembargo.models.reconcile import WorkflowRun


@dataclass(frozen=True)
class Progress:
    """One exposure's workflow as seen now."""

    workflow_id: str
    status: str  # running | completed | failed | terminated | canceled | timed_out
    step: str
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status != "running"


async def failure_message(client: Client, workflow_id: str, run_id: str | None = None) -> str:
    """The failure message of a closed, unsuccessful run (no payload contents)."""
    try:
        await client.get_workflow_handle(workflow_id, run_id=run_id).result()
    except WorkflowFailureError as err:
        cause = err.cause
        return str(getattr(cause, "message", None) or cause)
    return ""


async def snapshot(client: Client, workflow_id: str) -> Progress:
    """Status and current step of one exposure workflow."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    status = (desc.status or WorkflowExecutionStatus.RUNNING).name.lower()
    step = desc.typed_search_attributes.get(SA_STEP) or "-"
    error = await failure_message(client, workflow_id) if status in ("failed", "timed_out") else None
    return Progress(workflow_id, status, step, error)


def outage_note(reason: str, seconds: float) -> str:
    """What a watcher shows while Temporal does not answer."""
    return f"Temporal unreachable ({reason}), retrying in {seconds:.0f}s"


async def watch(
    client: Client,
    workflow_ids: Sequence[str],
    on_update: Callable[[list[Progress]], None],
    interval: float = 1.0,
    outage_limit: timedelta = timedelta(minutes=10),
    on_outage: Callable[[str], None] | None = None,
) -> list[Progress]:
    """Poll until every workflow is closed, calling ``on_update`` with each snapshot.

    A Temporal that stops answering is asked again with backoff (``on_outage`` gets
    what to show meanwhile) for up to ``outage_limit``, then TemporalUnreachable.
    """
    latest: dict[str, Progress] = {}
    address = client.service_client.config.target_host

    def retrying(reason: str, seconds: float) -> None:
        if on_outage is not None:
            on_outage(outage_note(reason, seconds))

    while True:
        pending = [wid for wid in workflow_ids if wid not in latest or not latest[wid].finished]

        async def poll(pending: list[str] = pending) -> list[Progress]:
            return list(await asyncio.gather(*(snapshot(client, wid) for wid in pending)))

        for prog in await riding_out(poll, outage_limit, retrying, address):
            latest[prog.workflow_id] = prog
        current = [latest[wid] for wid in workflow_ids]
        on_update(current)
        if all(p.finished for p in current):
            return current
        await asyncio.sleep(interval)


async def day_runs(
    client: Client, instrument: str, day_obs: int, concurrency: int = 16
) -> dict[str, WorkflowRun]:
    """The latest run of every exposure workflow of a day, by obs_id.

    One visibility query lists them all; only running and failed runs cost one more
    call each (their pending activity, or their error).
    """
    latest: dict[str, WorkflowExecution] = {}
    async for execution in client.list_workflows(names.day_workflows_query(instrument, day_obs)):
        obs_id = execution.typed_search_attributes.get(SA_OBS_ID)
        if obs_id is None:
            continue
        known = latest.get(obs_id)
        if known is None or execution.start_time > known.start_time:
            latest[obs_id] = execution
    gate = asyncio.Semaphore(concurrency)

    async def one(execution: WorkflowExecution) -> WorkflowRun:
        async with gate:
            return await _run(client, execution)

    runs = await asyncio.gather(*(one(e) for e in latest.values()))
    return dict(zip(latest, runs, strict=True))


async def _run(client: Client, execution: WorkflowExecution) -> WorkflowRun:
    status = (execution.status or WorkflowExecutionStatus.RUNNING).name.lower()
    run = WorkflowRun(
        workflow_id=execution.id,
        status=status,
        step=execution.typed_search_attributes.get(SA_STEP) or "-",
        started=execution.start_time,
    )
    if status == "running":
        return await _with_pending(client, run, execution.run_id)
    if status in ("failed", "timed_out"):
        return replace(run, error=await failure_message(client, execution.id, execution.run_id))
    return run


async def _with_pending(client: Client, run: WorkflowRun, run_id: str) -> WorkflowRun:
    """``run`` with its step as the run itself has it now (the visibility store's copy, which
    listed it, can lag behind) and its first pending activity: which, which attempt, its last
    failure."""
    desc = await client.get_workflow_handle(run.workflow_id, run_id=run_id).describe()
    run = replace(run, step=desc.typed_search_attributes.get(SA_STEP) or run.step)
    pending = desc.raw_description.pending_activities
    if not pending:
        return run
    first = pending[0]
    failure = (
        await failure_text(client.data_converter, first.last_failure)
        if first.HasField("last_failure")
        else ""
    )
    return replace(
        run, activity=first.activity_type.name, attempt=first.attempt, last_failure=failure or None
    )
