"""The rawintegrity flow's use-cases: put files to tape, the flow's status, an operator's decision.

``put`` starts one workflow per raw file (its id derived from the LFN): a file already on its
way is left alone (the running workflow is kept), a Done file is never started again, one an
operator gave up on starts anew. ``status`` reads Temporal's visibility store only (the state
and size search attributes) and queries just the files waiting for an operator, for the evidence.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from unembargo.adapters import tape_replicas
from unembargo.adapters.online import OnlineStorage
from unembargo.adapters.tape import LocalTape
from unembargo.models.locations import DataLocation, Operation, best_for, get_location, operation_queues
from unembargo.models.names import SA_RAW_BYTES, SA_RAW_STATE, SA_STEP
from unembargo.models.rawintegrity import (
    DECIDE_SIGNAL,
    FILE_WORKFLOW,
    GIVE_UP,
    RETRY,
    STEPS,
    WAITING_OPERATOR,
    RawFileInput,
    RawFileState,
    RawIntegritySettings,
    RawPolicy,
    State,
    Step,
    check_lfn,
    classify,
    file_workflow_id,
)
from unembargo.models.settings import Settings

if TYPE_CHECKING:
    from rucio.client import Client as RucioClient

# Workflows started at once by ``put`` (each start is one round trip).
STARTS_AT_ONCE = 50
# Files waiting for an operator whose evidence status shows.
SHOWN = 50
# A file is listed as Active from its start, before its workflow's first task runs.
STARTING = TypedSearchAttributes(
    [SearchAttributePair(SA_RAW_STATE, State.ACTIVE.value), SearchAttributePair(SA_STEP, Step.PUT.value)]
)


@dataclass(frozen=True)
class Route:
    """Where a file's steps run: its locations, the tape RSE and each step's queue."""

    online: str
    tape: str
    rse: str
    queues: dict[str, str]


def route(session: Session, config: RawIntegritySettings) -> Route:
    """The queue of each step, from the location table (a step's operation at its location)."""
    online = get_location(session, config.online_location)
    tape = get_location(session, config.tape_location)
    catalogue = (
        get_location(session, config.catalogue_location)
        if config.catalogue_location
        else best_for(session, Operation.REGISTRATION)
    )
    at: dict[Step, DataLocation] = {
        Step.PUT: tape,
        Step.TAPE: tape,
        Step.REMOVE_TAPE: tape,
        Step.REQUEST: catalogue,
        Step.REGISTER: catalogue,
        Step.REMOVE_ONLINE: online,
    }
    queues = {}
    for step, loc in at.items():
        served = operation_queues(session, loc)
        op = Operation(STEPS[step].location)
        if op not in served:
            raise ValueError(f"location {loc.name!r} does not serve {op.value}, which step {step} needs")
        queues[step.value] = served[op]
    return Route(online.name, tape.name, config.rse, queues)


def online_lfns(session: Session, config: RawIntegritySettings, prefix: str) -> list[str]:
    """LFNs of the online files under ``prefix`` (a run's folder), sorted."""
    loc = get_location(session, config.online_location)
    storage = OnlineStorage(Path(loc.path or ""))
    base = storage.path(check_lfn(prefix.strip("/")))
    if not base.is_dir():
        return []
    files = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return sorted(p.relative_to(storage.root).as_posix() for p in files)


async def put(
    client: Client,
    settings: Settings,
    where: Route,
    lfns: Sequence[str],
    policy: RawPolicy | None = None,
) -> Counter[str]:
    """Start each file's workflow (or keep its running one); outcomes counted: started, done."""
    policy = policy or RawPolicy()
    gate = asyncio.Semaphore(STARTS_AT_ONCE)

    async def one(lfn: str) -> str:
        wid = file_workflow_id(lfn)
        async with gate:
            try:
                await client.start_workflow(
                    FILE_WORKFLOW,
                    RawFileInput(
                        lfn,
                        where.online,
                        where.tape,
                        where.rse,
                        where.queues,
                        settings.workflow_task_queue,
                        policy,
                    ),  # fmt: skip
                    id=wid,
                    task_queue=settings.workflow_task_queue,
                    # A Done file is never put again; one an operator gave up on may be.
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    search_attributes=STARTING,
                )
            except WorkflowAlreadyStartedError:
                return "done"
            return "started"

    return Counter(await asyncio.gather(*(one(check_lfn(lfn)) for lfn in lfns)))


@dataclass
class Waiting:
    lfn: str
    step: str
    reason: str | None


@dataclass
class RawStatus:
    """The flow at a glance, from visibility: files by state and step, waiting bytes, operators' files."""

    by_state: dict[str, int] = field(default_factory=dict)
    by_step: dict[str, int] = field(default_factory=dict)
    # Files put but not Done (nor given up), and their bytes: what the online storage still holds.
    waiting_files: int = 0
    waiting_bytes: int = 0
    # Files Done in the last hour: the flow's rate.
    done_last_hour: int = 0
    operator: list[Waiting] = field(default_factory=list)


def status_query(prefix: str | None = None) -> str:
    query = f'WorkflowType = "{FILE_WORKFLOW}"'
    if prefix:
        query += f' AND WorkflowId STARTS_WITH "{file_workflow_id(check_lfn(prefix.strip("/")))}"'
    return query


async def status(client: Client, prefix: str | None = None) -> RawStatus:
    """Tally every file workflow's state and step (latest run of each id)."""
    found = RawStatus()
    states: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    seen: set[str] = set()
    asking: list[str] = []
    async for wf in client.list_workflows(status_query(prefix)):
        if wf.id in seen:
            continue
        seen.add(wf.id)
        attrs = wf.typed_search_attributes
        state = attrs.get(SA_RAW_STATE) or State.ACTIVE.value
        step = attrs.get(SA_STEP) or "-"
        running = wf.status == WorkflowExecutionStatus.RUNNING
        if not running and wf.status != WorkflowExecutionStatus.COMPLETED and state != State.FAILED:
            # Terminated, timed out or failed without an operator's give_up: say so.
            state = f"{state} ({wf.status.name.lower() if wf.status else 'closed'})"
        states[state] += 1
        steps[step] += 1
        if running and state not in (State.DONE.value, State.FAILED.value):
            found.waiting_files += 1
            found.waiting_bytes += int(attrs.get(SA_RAW_BYTES) or 0)
            if step == WAITING_OPERATOR:
                asking.append(wf.id)
    found.by_state, found.by_step = dict(states), dict(steps)
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    recent = (
        f'{status_query(prefix)} AND {SA_RAW_STATE.name} = "{State.DONE.value}" AND CloseTime > "{since}"'
    )
    found.done_last_hour = (await client.count_workflows(recent)).count
    for wid in asking[:SHOWN]:
        got: RawFileState = await client.get_workflow_handle(wid).query("state", result_type=RawFileState)
        found.operator.append(Waiting(got.lfn, got.step, got.operator))
    return found


async def decide(client: Client, lfn: str, decision: str) -> None:
    """An operator's decision for a file waiting for them: retry or give_up."""
    if decision not in (RETRY, GIVE_UP):
        raise ValueError(f"decision {decision!r}: use {RETRY} or {GIVE_UP}")
    await client.get_workflow_handle(file_workflow_id(lfn)).signal(DECIDE_SIGNAL, decision)


def reconcile(
    session: Session, config: RawIntegritySettings, rucio: RucioClient, scope: str, run: str
) -> dict[str, list[str]]:
    """Every file of a run by class (models/rawintegrity.classify), from what the online storage,
    the tape and Rucio hold of it, never from the workflows' own account."""
    folder = check_lfn(run.strip("/"))
    online = OnlineStorage(Path(get_location(session, config.online_location).path or ""))
    tape = LocalTape(Path(get_location(session, config.tape_location).path or ""))
    names = set(online_lfns(session, config, folder)) | set(tape.migrated_lfns(folder))
    names |= set(tape_replicas.names_under(rucio, scope, folder))
    held = tape_replicas.held(rucio, scope, config.rse, sorted(names))
    found: dict[str, list[str]] = {}
    for lfn in sorted(names):
        copy = tape.tape_checksum(lfn)
        entry = held.get(lfn)
        catalogued = None
        if entry is not None and entry.state == "AVAILABLE" and entry.bytes is not None and entry.adler32:
            catalogued = (entry.bytes, entry.adler32)
        cls = classify(
            online.checksum(lfn) if online.exists(lfn) else None,
            (copy.size, copy.adler32) if copy else None,
            catalogued,
        )
        found.setdefault(cls, []).append(lfn)
    return found
