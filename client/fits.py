"""The FITS flow's use-cases: start the DHS watcher, requeue files, and the flow's status.

``requeue`` is what ``add_to_ingest_queue`` and its cron lines did: pick files (by name
pattern, by days of lastmod, by path) and run each file's workflow again without a copy;
each ingest then decides by lastmod (or md5 with ``force_md5``, or always with ``force``).
``status`` is what the queue-status page showed, per step: the files waiting, in progress
and failed (with the exception and its traceback), plus the DHS files not valid FITS and
the destinations backed off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session, select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

from unembargo.adapters.fits_db import requeue_names
from unembargo.adapters.fits_start import file_input, place, start_files
from unembargo.models.fits import FitsDestination, FitsSeen, FitsSettings
from unembargo.models.fits_flow import (
    DATAFLOW,
    DHS,
    FILE_WORKFLOW,
    INVALID,
    REQUEUE_WORKFLOW,
    SETTLING,
    STATE_QUERY,
    STEP_OF_ACTIVITY,
    WATCH_WORKFLOW,
    RequeueInput,
    ScanInput,
    ScanReceipt,
    Step,
    WatchInput,
    requeue_schedule_id,
    watch_workflow_id,
)
from unembargo.models.locations import get_location
from unembargo.models.names import SA_STEP
from unembargo.models.settings import Settings

# Runs listed per state: the status is for people; the UI lists the rest.
LIMIT = 200


async def start_watch(client: Client, settings: Settings, fits: FitsSettings, session: Session) -> str:
    """Start the DHS poller (one per DHS location); 'started' or 'running' (already)."""
    scan = ScanInput(fits.dhs, fits.dataflow, list(fits.destinations), fits.archive,
                     settings.workflow_task_queue, fits.min_age_s, fits.invalid_after)  # fmt: skip
    inp = WatchInput(scan, place(session, fits.dhs, DHS).queue, fits.poll_s, heartbeat_s=fits.heartbeat_s)
    wid = watch_workflow_id(fits.dhs)
    handle = await client.start_workflow(
        WATCH_WORKFLOW,
        inp,
        id=wid,
        task_queue=settings.workflow_task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    desc = await handle.describe()
    return "started" if desc.run_id == handle.result_run_id and _fresh(desc.start_time) else "running"


def _fresh(when: datetime | None) -> bool:
    return when is not None and datetime.now(UTC) - when < timedelta(seconds=30)


def select_files(
    session: Session,
    fits: FitsSettings,
    file_re: str | None = None,
    days: float | None = None,
    path: str | None = None,
) -> list[str]:
    """The names ``requeue`` would run again (adapters/fits_db.requeue_names)."""
    root = Path(get_location(session, fits.dataflow).path or "")
    return requeue_names(session, fits.dataflow, root, file_re, days, path)


async def requeue(
    client: Client,
    settings: Settings,
    fits: FitsSettings,
    session: Session,
    names: Sequence[str],
    force: bool = False,
    force_md5: bool = False,
) -> list[str]:
    """Run each file's workflow again from its ingest (no copy); their workflow ids."""
    policy = fits.policy()
    inputs = [
        file_input(
            session, n, None, fits.dataflow, list(fits.destinations), fits.archive, force, force_md5, policy
        )
        for n in names
    ]
    return await start_files(client, settings.workflow_task_queue, inputs)


async def schedule_requeue(
    client: Client,
    settings: Settings,
    fits: FitsSettings,
    session: Session,
    every: timedelta,
    days: float,
    force: bool = False,
    force_md5: bool = False,
    file_re: str | None = None,
) -> str:
    """A Temporal Schedule requeueing the last ``days`` every ``every`` (the nightly cron
    line); 'created' or 'updated'."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleUpdate,
        ScheduleUpdateInput,
    )

    inp = RequeueInput(
        fits.dataflow, list(fits.destinations), fits.archive, place(session, fits.dataflow, DATAFLOW).queue,
        settings.workflow_task_queue, file_re, days, None, force, force_md5, fits.policy(),
    )  # fmt: skip
    sid = requeue_schedule_id(fits.dataflow)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            REQUEUE_WORKFLOW,
            inp,
            id=sid,
            task_queue=settings.workflow_task_queue,
            execution_timeout=timedelta(hours=1),
        ),  # fmt: skip
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # A requeue still running when the next comes due: skip it; the next sees the same files.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
    )
    try:
        await client.create_schedule(sid, schedule)
        return "created"
    except ScheduleAlreadyRunningError:

        def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(sid).update(replace)
        return "updated"


# ---------------------------------------------------------------------------- status


@dataclass
class Failure:
    name: str
    step: str
    error: str
    traceback: str = ""


@dataclass
class StepCounts:
    waiting: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


@dataclass
class FitsStatus:
    watch: str
    last_scan: ScanReceipt | None
    # Per step (and "dhs" for files settling on the DHS disk).
    steps: dict[str, StepCounts]
    invalid: dict[str, str]
    destinations: dict[str, str]
    done: int


async def status(client: Client, fits: FitsSettings, session: Session) -> FitsStatus:
    """The flow's state now, from Temporal (runs and their pending steps) and the database."""
    steps: dict[str, StepCounts] = {"dhs": StepCounts(), **{s.value: StepCounts() for s in Step}}
    seen = session.exec(select(FitsSeen).where(FitsSeen.location == fits.dhs)).all()
    steps["dhs"].waiting = sorted(r.name for r in seen if r.state == SETTLING)
    invalid = {r.name: r.problem for r in seen if r.state == INVALID}
    destinations = {
        d.name: f"{d.failures} failure(s), backed off until {d.backoff_until:%H:%M:%S}: {d.last_error}"
        for d in session.exec(select(FitsDestination)).all()
        if d.backoff_until is not None
    }
    running = [w async for w in client.list_workflows(
        f'WorkflowType = "{FILE_WORKFLOW}" AND ExecutionStatus = "Running"', limit=LIMIT)]  # fmt: skip
    for desc in await asyncio.gather(*(client.get_workflow_handle(w.id).describe() for w in running)):
        name = desc.id.removeprefix("fits-")
        pending = desc.raw_description.pending_activities
        if not pending:
            step = desc.typed_search_attributes.get(SA_STEP) or "queued"
            steps.setdefault(step, StepCounts()).in_progress.append(name)
        for act in pending:
            step = STEP_OF_ACTIVITY.get(act.activity_type.name, act.activity_type.name)
            counts = steps.setdefault(str(step), StepCounts())
            if act.attempt > 1 and act.HasField("last_failure"):
                counts.waiting.append(f"{name} (attempt {act.attempt}: {act.last_failure.message[:120]})")
            else:
                counts.in_progress.append(name)
    failed = [w async for w in client.list_workflows(
        f'WorkflowType = "{FILE_WORKFLOW}" AND ExecutionStatus = "Failed"', limit=LIMIT)]  # fmt: skip
    for f in await asyncio.gather(*(_failure(client, w.id) for w in failed)):
        steps.setdefault(f.step, StepCounts()).failed.append(f)
    done = await client.count_workflows(f'WorkflowType = "{FILE_WORKFLOW}" AND ExecutionStatus = "Completed"')
    watch, last = await _watch(client, fits)
    return FitsStatus(watch, last, steps, invalid, destinations, done.count)


async def _watch(client: Client, fits: FitsSettings) -> tuple[str, ScanReceipt | None]:
    handle = client.get_workflow_handle(watch_workflow_id(fits.dhs))
    try:
        desc = await handle.describe()
    except Exception:
        return "not started (`unembargo fits watch`)", None
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return (desc.status.name.lower() if desc.status else "unknown"), None
    try:
        return "running", await handle.query(STATE_QUERY, result_type=ScanReceipt | None)  # type: ignore[arg-type]
    except Exception:
        return "running (no worker answers its query)", None


async def _failure(client: Client, wid: str) -> Failure:
    """A failed run's step, innermost exception and its traceback."""
    name = wid.removeprefix("fits-")
    try:
        await client.get_workflow_handle(wid).result()
    except WorkflowFailureError as err:
        step = "ingest"
        chain: list[BaseException] = []
        cause: BaseException | None = err.cause
        while cause is not None:
            chain.append(cause)
            if isinstance(cause, ActivityError):
                step = str(STEP_OF_ACTIVITY.get(cause.activity_type, cause.activity_type))
            cause = cause.cause if isinstance(cause, FailureError) else None
        inner = chain[-1] if chain else err
        top = chain[0] if chain else err
        trace = ""
        for exc in reversed(chain):
            raw = exc.failure if isinstance(exc, FailureError) else None
            if raw is not None and raw.stack_trace:
                trace = raw.stack_trace
                break
        error = _describe(top) if top is inner else f"{_describe(top)}\n  caused by {_describe(inner)}"
        return Failure(name, step, error, trace)
    return Failure(name, "?", "the run failed, then a later run of the same file completed")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApplicationError):
        return f"{exc.type or 'ApplicationError'}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"
