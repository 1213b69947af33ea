"""Watch exposure workflows move through their steps until they all finish."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from unembargo.workflows.exposure import SA_STEP


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


async def _error_of(client: Client, workflow_id: str) -> str:
    """The failure message of a closed, unsuccessful run (no payload contents)."""
    try:
        await client.get_workflow_handle(workflow_id).result()
    except WorkflowFailureError as err:
        cause = err.cause
        return str(getattr(cause, "message", None) or cause)
    return ""


async def snapshot(client: Client, workflow_id: str) -> Progress:
    """Status and current step of one exposure workflow."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    status = (desc.status or WorkflowExecutionStatus.RUNNING).name.lower()
    step = desc.typed_search_attributes.get(SA_STEP) or "-"
    error = await _error_of(client, workflow_id) if status in ("failed", "timed_out") else None
    return Progress(workflow_id, status, step, error)


async def watch(
    client: Client,
    workflow_ids: Sequence[str],
    on_update: Callable[[list[Progress]], None],
    interval: float = 1.0,
) -> list[Progress]:
    """Poll until every workflow is closed, calling ``on_update`` with each snapshot."""
    latest: dict[str, Progress] = {}
    while True:
        pending = [wid for wid in workflow_ids if wid not in latest or not latest[wid].finished]
        for prog in await asyncio.gather(*(snapshot(client, wid) for wid in pending)):
            latest[prog.workflow_id] = prog
        current = [latest[wid] for wid in workflow_ids]
        on_update(current)
        if all(p.finished for p in current):
            return current
        await asyncio.sleep(interval)
