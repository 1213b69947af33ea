"""Temporal, as the FITS flow's starters see it: where each step runs, and starting a file.

A file's workflow is started with signal-with-start under its deterministic id: a new
name starts a run; a name whose run is going gets the ``again`` signal (one more pass
when this one ends); a name whose run has closed starts a new run of the same id. So a
file is never processed by two runs at once, whoever starts it (the watcher, a requeue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from sqlmodel import Session
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from unembargo.models.fits_flow import (
    AGAIN_SIGNAL,
    DATAFLOW,
    DESTINATION,
    DHS,
    FILE_WORKFLOW,
    OPERATION_OF_ROLE,
    QUEUED,
    Again,
    FileInput,
    FitsPolicy,
    Place,
    fits_workflow_id,
)
from unembargo.models.locations import get_location, operation_queues
from unembargo.models.names import SA_STEP

# Starts in flight at once (a requeue of a month is thousands of files).
START_CONCURRENCY = 16


def place(session: Session, location: str, role: str) -> Place:
    """``location`` and the queue of the operation ``role`` needs there."""
    loc = get_location(session, location)
    op = OPERATION_OF_ROLE[role]
    queues = {str(k): v for k, v in operation_queues(session, loc).items() if k is not None}
    if op not in queues:
        raise LookupError(
            f"location {location!r} ({loc.type}) does not serve {op}, which the FITS flow needs"
        )
    return Place(location, queues[op])


def file_input(
    session: Session,
    name: str,
    dhs: str | None,
    dataflow: str,
    destinations: Sequence[str],
    archive: str,
    force: bool = False,
    force_md5: bool = False,
    policy: FitsPolicy | None = None,
) -> FileInput:
    """A file's run input, its queues looked up in the database."""
    return FileInput(
        name=name,
        dataflow=place(session, dataflow, DATAFLOW),
        destinations=[place(session, d, DESTINATION) for d in destinations],
        archive=archive,
        dhs=place(session, dhs, DHS) if dhs else None,
        force=force,
        force_md5=force_md5,
        policy=policy or FitsPolicy(),
    )


async def start_file(client: Client, workflow_queue: str, inp: FileInput) -> str:
    """Start (or signal) ``inp.name``'s workflow; its workflow id."""
    wid = fits_workflow_id(inp.name)
    again = Again(copy=inp.dhs is not None, force=inp.force, force_md5=inp.force_md5)
    await client.start_workflow(
        FILE_WORKFLOW,
        inp,
        id=wid,
        task_queue=workflow_queue,
        start_signal=AGAIN_SIGNAL,
        start_signal_args=[again],
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_STEP, QUEUED)]),
    )
    return wid


async def start_files(client: Client, workflow_queue: str, inputs: Iterable[FileInput]) -> list[str]:
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def one(inp: FileInput) -> str:
        async with gate:
            return await start_file(client, workflow_queue, inp)

    return list(await asyncio.gather(*(one(i) for i in inputs)))
