"""``unembargo schedule``: a Temporal Schedule runs the selection of ``unembargo start``.

Every ``every`` (default 15 min) the schedule starts a SelectAndStart workflow
(workflows/select.py) that selects the due exposures and starts their workflows
with the usual deterministic ids. Policies, set explicitly:

- catch-up: a run missed while Temporal was down (or the schedule's worker was) is
  run when it is back, if it was due less than ``CATCHUP_WINDOW`` ago;
- overlap: a run that comes due while the previous one still runs is skipped
  (``SKIP``), and the next one selects whatever it would have. Runs that do
  overlap anyway (a manual trigger) are harmless: a start is refused for any
  exposure whose workflow exists, so none is started twice.

    >>> asyncio.run(create(client, settings, ScheduleRequest(every=timedelta(minutes=15))))  # doctest: +SKIP
    'created'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from unembargo.models import names
from unembargo.models.schedule import SELECT_STEP, SelectInput
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.tables import step_queues

CATCHUP_WINDOW = timedelta(days=1)
OVERLAP = ScheduleOverlapPolicy.SKIP
# A run that hangs (its activity retries for up to about an hour) never blocks the schedule longer.
RUN_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class ScheduleRequest:
    """What the schedule selects, and how often."""

    instrument: str = "LSSTCam"
    every: timedelta = timedelta(minutes=15)
    # None: each exposure's embargo rule decides (the configured rules); else one period.
    window: timedelta | None = None
    lookback: timedelta = timedelta(days=30)
    paused: bool = False
    note: str = ""


@dataclass(frozen=True)
class ScheduleSummary:
    """A schedule as ``schedule list`` shows it."""

    id: str
    paused: bool
    note: str
    every: list[float]
    window_s: float | None
    lookback_s: float
    overlap: str
    catchup_window_s: float | None
    actions: int
    skipped_overlap: int
    missed_catchup: int
    next_runs: list[datetime] = field(default_factory=list)
    # (scheduled time, workflow id of the run) of the latest runs.
    recent: list[tuple[datetime, str]] = field(default_factory=list)


def selection_queue(settings: Settings) -> str:
    """Queue of the selection activity: that of the step it runs beside (SELECT_STEP)."""
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        return step_queues(session)[SELECT_STEP]


def build(settings: Settings, request: ScheduleRequest) -> Schedule:
    """The schedule: its interval, its action (a SelectAndStart run) and its policies."""
    sid = names.schedule_id(request.instrument)
    arg = SelectInput(
        queue=selection_queue(settings),
        instrument=request.instrument,
        window_s=None if request.window is None else request.window.total_seconds(),
        lookback_s=request.lookback.total_seconds(),
    )
    return Schedule(
        action=ScheduleActionStartWorkflow(
            names.SELECT_WORKFLOW,
            arg,
            id=sid,
            task_queue=settings.workflow_task_queue,
            execution_timeout=RUN_TIMEOUT,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=request.every)]),
        policy=SchedulePolicy(overlap=OVERLAP, catchup_window=CATCHUP_WINDOW, pause_on_failure=False),
        state=ScheduleState(paused=request.paused, note=request.note or None),
    )


async def create(client: Client, settings: Settings, request: ScheduleRequest) -> str:
    """Create the instrument's schedule, or update it to ``request``; "created" or "updated"."""
    schedule = build(settings, request)
    sid = names.schedule_id(request.instrument)
    try:
        await client.create_schedule(sid, schedule)
        return "created"
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(sid).update(replace)
        return "updated"


async def summaries(client: Client) -> list[ScheduleSummary]:
    """Every unembargo schedule of the namespace."""
    prefix = names.schedule_id("X").removesuffix("X")
    found = []
    async for entry in await client.list_schedules():
        if entry.id.startswith(prefix):
            found.append(summary(await client.get_schedule_handle(entry.id).describe()))
    return sorted(found, key=lambda s: s.id)


def summary(desc: ScheduleDescription) -> ScheduleSummary:
    """The facts an operator needs from a schedule's description."""
    schedule, info = desc.schedule, desc.info
    action = schedule.action
    arg = action.args[0] if isinstance(action, ScheduleActionStartWorkflow) and action.args else None
    inp = desc.data_converter.payload_converter.from_payload(arg, SelectInput) if arg is not None else None
    catchup = schedule.policy.catchup_window
    return ScheduleSummary(
        id=desc.id,
        paused=schedule.state.paused,
        note=schedule.state.note or "",
        every=[i.every.total_seconds() for i in schedule.spec.intervals],
        window_s=inp.window_s if inp else None,
        lookback_s=inp.lookback_s if inp else 0.0,
        overlap=schedule.policy.overlap.name,
        catchup_window_s=catchup.total_seconds() if catchup else None,
        actions=info.num_actions,
        skipped_overlap=info.num_actions_skipped_overlap,
        missed_catchup=info.num_actions_missed_catchup_window,
        next_runs=list(info.next_action_times),
        recent=[(a.scheduled_at, getattr(a.action, "workflow_id", "")) for a in info.recent_actions],
    )


async def describe(client: Client, instrument: str) -> ScheduleSummary:
    return summary(await client.get_schedule_handle(names.schedule_id(instrument)).describe())


async def pause(client: Client, instrument: str, note: str) -> None:
    await client.get_schedule_handle(names.schedule_id(instrument)).pause(note=note)


async def resume(client: Client, instrument: str, note: str) -> None:
    await client.get_schedule_handle(names.schedule_id(instrument)).unpause(note=note)


async def trigger(client: Client, instrument: str) -> None:
    """Run the selection once now, paused or not, even while a run is in progress (ALLOW_ALL):
    overlapping runs start no exposure twice."""
    await client.get_schedule_handle(names.schedule_id(instrument)).trigger(
        overlap=ScheduleOverlapPolicy.ALLOW_ALL
    )


async def delete(client: Client, instrument: str) -> None:
    """Delete the schedule; runs already started and their exposures go on."""
    await client.get_schedule_handle(names.schedule_id(instrument)).delete()
