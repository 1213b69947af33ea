"""``unembargo status``: an exposure's step timeline, read from its workflow history,
and its arrival's state (arriving, embargoed until when, incomplete, not yet arrived).

The history answers for any run, running or closed, with no worker up: each step is
done when its activity completed (at that time, with that receipt); a running run
adds its pending activity (attempt, last failure, next attempt) from ``describe``.

    >>> asyncio.run(exposure_status(client, "LSSTCam", "MC_O_20251231_000010"))  # doctest: +SKIP
    ExposureStatus(workflow_id='unembargo-LSSTCam-MC_O_20251231_000010', status='running', ...)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from unembargo.client.progress import failure_message
from unembargo.engine.codec import failure_text
from unembargo.engine.errors import SourceUnavailable
from unembargo.models import arrival, names
from unembargo.models.arrival import ArrivalState
from unembargo.models.exposure import STEP_OF_ACTIVITY, STEPS, Step
from unembargo.models.names import SA_DAY_OBS, SA_INSTRUMENT, SA_OBS_ID, SA_STEP
from unembargo.models.reconcile import (
    ARRIVAL_ARRIVING,
    ARRIVAL_EMBARGOED,
    ARRIVAL_INCOMPLETE,
    ARRIVAL_STARTED,
    ARRIVAL_STOPPED,
    NOT_ARRIVED,
    ArrivalRun,
)
from unembargo.models.settings import Settings


@dataclass(frozen=True)
class StepStatus:
    """One step of a run: done or not, when, what its receipt says, how many attempts."""

    step: str
    done: bool = False
    when: datetime | None = None
    summary: str = ""
    attempts: int = 0
    # The latest failure of an attempt of this step (retried, or what failed the run).
    last_failure: str | None = None


@dataclass(frozen=True)
class PendingStep:
    """The activity a running run waits on."""

    step: str
    activity: str
    activity_id: str
    attempt: int
    state: str
    last_failure: str | None
    next_attempt: datetime | None


@dataclass(frozen=True)
class ExposureStatus:
    workflow_id: str
    run_id: str
    status: str  # running | completed | failed | terminated | canceled | timed_out
    # The `step` search attribute: where it is, or where it failed; "done" when complete.
    step: str
    started: datetime | None
    closed: datetime | None
    steps: list[StepStatus] = field(default_factory=list)
    pending: PendingStep | None = None
    # An incomplete exposure waiting on its timer: why (the IncompleteExposure message).
    waiting_for: str | None = None
    # A closed, unsuccessful run: its error type and message.
    error_type: str | None = None
    error: str | None = None

    @property
    def stuck(self) -> bool:
        """Running, with its current activity failing and being retried."""
        return self.status == "running" and self.pending is not None and self.pending.attempt > 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stuck": self.stuck}


class NoWorkflow(LookupError):
    """No workflow was ever started for this exposure (or its history has expired)."""


async def exposure_status(client: Client, instrument: str, obs_id: str) -> ExposureStatus:
    """The latest run of an exposure's workflow, step by step."""
    wid = names.workflow_id(instrument, obs_id)
    try:
        desc = await client.get_workflow_handle(wid).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise NoWorkflow(
            f"no workflow {wid}: the exposure was never started (see `unembargo start --dry-run`)"
        ) from err
    handle = client.get_workflow_handle(wid, run_id=desc.run_id)
    return await run_status(client, handle, desc)


async def run_status(
    client: Client, handle: WorkflowHandle[Any, Any], desc: WorkflowExecutionDescription
) -> ExposureStatus:
    """One run's status from its description and history."""
    history = await handle.fetch_history()
    timeline = await _Timeline.read(client, history.events)
    for act in desc.raw_description.pending_activities:
        if act.HasField("last_failure"):
            act.last_failure.message = await failure_text(client.data_converter, act.last_failure)
    status = (desc.status or WorkflowExecutionStatus.RUNNING).name.lower()
    pending = _pending(desc) if status == "running" else None
    return ExposureStatus(
        workflow_id=desc.id,
        run_id=desc.run_id,
        status=status,
        step=desc.typed_search_attributes.get(SA_STEP) or "-",
        started=desc.start_time,
        closed=desc.close_time,
        steps=timeline.steps(),
        pending=pending,
        waiting_for=timeline.waiting_for if status == "running" and pending is None else None,
        error_type=timeline.error_type,
        error=timeline.error,
    )


def _pending(desc: WorkflowExecutionDescription) -> PendingStep | None:
    for act in desc.raw_description.pending_activities:
        name = act.activity_type.name
        return PendingStep(
            step=STEP_OF_ACTIVITY.get(name, name),
            activity=name,
            activity_id=act.activity_id,
            attempt=act.attempt,
            state=_enum_word(act.state),
            last_failure=act.last_failure.message if act.HasField("last_failure") else None,
            next_attempt=act.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
            if act.HasField("next_attempt_schedule_time")
            else None,
        )
    return None


def _enum_word(value: int) -> str:
    from temporalio.api.enums.v1 import PendingActivityState

    return PendingActivityState.Name(value).removeprefix("PENDING_ACTIVITY_STATE_").lower()  # type: ignore[arg-type]


@dataclass
class _Timeline:
    """What a history says about each step."""

    done: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    waiting_for: str | None = None
    error_type: str | None = None
    error: str | None = None

    # Step of each ActivityTaskScheduled event id.
    step_of: dict[int, str] = field(default_factory=dict)

    @classmethod
    async def read(cls, client: Client, events: Sequence[HistoryEvent]) -> _Timeline:
        line = cls()
        for event in events:
            kind = event.WhichOneof("attributes")
            if kind == "activity_task_completed_event_attributes":
                await line._completed(client, event)
                continue
            if kind in _SEALED_FAILURES:
                # The payload codec may have moved the message into an encrypted payload.
                failure = getattr(event, kind).failure
                failure.message = await failure_text(client.data_converter, failure)
            if kind in _READERS:
                _READERS[kind](line, event)
        return line

    def _scheduled(self, event: HistoryEvent) -> None:
        name = event.activity_task_scheduled_event_attributes.activity_type.name
        self.step_of[event.event_id] = STEP_OF_ACTIVITY.get(name, name)

    def _started(self, event: HistoryEvent) -> None:
        # Written once per scheduled activity, when it closes, with its last attempt number.
        attrs = event.activity_task_started_event_attributes
        step = self.step_of.get(attrs.scheduled_event_id, "")
        self.attempts[step] = self.attempts.get(step, 0) + attrs.attempt

    async def _completed(self, client: Client, event: HistoryEvent) -> None:
        attrs = event.activity_task_completed_event_attributes
        step = self.step_of.get(attrs.scheduled_event_id, "")
        receipt = await _decoded(client, attrs.result.payloads)
        self.done[step] = (event.event_time.ToDatetime(tzinfo=UTC), receipt_summary(step, receipt))
        self.waiting_for = None

    def _failed(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_failed_event_attributes
        self.failures[self.step_of.get(attrs.scheduled_event_id, "")] = _failure_text(attrs.failure)
        if attrs.failure.application_failure_info.type == "IncompleteExposure":
            self.waiting_for = attrs.failure.message

    def _run_failed(self, event: HistoryEvent) -> None:
        failure = event.workflow_execution_failed_event_attributes.failure
        self.error_type = failure.application_failure_info.type or None
        self.error = failure.message

    def _terminated(self, event: HistoryEvent) -> None:
        self.error_type = "Terminated"
        self.error = event.workflow_execution_terminated_event_attributes.reason

    def steps(self) -> list[StepStatus]:
        found = []
        for step in STEPS:
            when, summary = self.done.get(step, (None, ""))
            found.append(
                StepStatus(
                    step=step,
                    done=step in self.done,
                    when=when,
                    summary=summary,
                    attempts=self.attempts.get(step, 0),
                    last_failure=self.failures.get(step),
                )
            )
        return found


_READERS: dict[str, Callable[[_Timeline, HistoryEvent], None]] = {
    "activity_task_scheduled_event_attributes": _Timeline._scheduled,
    "activity_task_started_event_attributes": _Timeline._started,
    "activity_task_failed_event_attributes": _Timeline._failed,
    "workflow_execution_failed_event_attributes": _Timeline._run_failed,
    "workflow_execution_terminated_event_attributes": _Timeline._terminated,
}


# Events whose failure message the payload codec seals (client/codec.py).
_SEALED_FAILURES = ("activity_task_failed_event_attributes", "workflow_execution_failed_event_attributes")


def _failure_text(failure: Any) -> str:
    kind = failure.application_failure_info.type
    return f"{kind}: {failure.message}" if kind else failure.message


async def _decoded(client: Client, payloads: Any) -> dict[str, Any]:
    values = await client.data_converter.decode(list(payloads))
    return values[0] if values and isinstance(values[0], dict) else {}


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def receipt_summary(step: str, receipt: dict[str, Any]) -> str:
    """One line from a step's receipt: what it left behind, and whether it found it done.

    >>> receipt_summary("ingest", {"datasets": 205, "already_done": True})
    '205 datasets in the main butler (already done)'
    """
    file = receipt.get("file") or {}
    summaries: dict[str, Callable[[], str]] = {
        Step.ZIP: lambda: (
            f"{file.get('relpath')} ({_size(file.get('size', 0))}, "
            f"{receipt.get('members')} members, {receipt.get('raws')} raws)"
        ),
        Step.EXPORT: lambda: (
            f"{file.get('relpath')} ({receipt.get('records')} records, "
            f"tracts {', '.join(map(str, receipt.get('tracts') or [])) or 'none'})"
        ),
        Step.INGEST: lambda: f"{receipt.get('datasets')} datasets in the main butler",
        Step.REGISTER: lambda: (
            f"{receipt.get('files')} files in {len(receipt.get('datasets') or [])} datasets"
        ),
        Step.TAG: lambda: f"{receipt.get('dataset')} closed, {receipt.get('metadata')}",
    }
    text = summaries.get(step, lambda: "")()
    return f"{text} (already done)" if receipt.get("already_done") else text


# ---------------------------------------------------------------- arrivals

# The IncompleteExposure message of workflows/arrival.py: how many expected sensors lack a raw.
_MISSING = re.compile(r"(\d+) of (\d+) expected sensors have no raw")
# The arrival workflow's query of its ArrivalState (the method's name).
_STATE_QUERY = "state"
# A running arrival's `state` query is answered by a worker; none may be up.
_QUERY_TIMEOUT = timedelta(seconds=5)


def day_arrivals_query(instrument: str, day_obs: int) -> str:
    """Temporal visibility query listing every arrival workflow of a day."""
    instrument, day_obs = names.check_name("instrument", instrument), names.check_day_obs(day_obs)
    return (
        f'WorkflowType = "{arrival.ARRIVAL_WORKFLOW}" AND {SA_INSTRUMENT.name} = "{instrument}" '
        f"AND {SA_DAY_OBS.name} = {day_obs}"
    )


async def day_arrivals(
    client: Client, instrument: str, day_obs: int, concurrency: int = 16
) -> dict[str, ArrivalRun]:
    """The latest arrival run of every exposure of a day, by obs_id.

    One visibility query lists them all (state from the run's status and `step`); only
    failed runs cost one more call each (their IncompleteExposure message: how many
    sensors are missing). An embargoed run's end is not in visibility: the caller
    fills it in from the embargo butler (``with_embargo_ends``).
    """
    latest: dict[str, WorkflowExecution] = {}
    async for execution in client.list_workflows(day_arrivals_query(instrument, day_obs)):
        obs_id = execution.typed_search_attributes.get(SA_OBS_ID)
        known = latest.get(obs_id) if obs_id else None
        if obs_id and (known is None or execution.start_time > known.start_time):
            latest[obs_id] = execution
    gate = asyncio.Semaphore(concurrency)

    async def one(execution: WorkflowExecution) -> ArrivalRun:
        async with gate:
            return await arrival_run(client, execution)

    runs = await asyncio.gather(*(one(e) for e in latest.values()))
    return dict(zip(latest, runs, strict=True))


async def arrival_status(client: Client, instrument: str, obs_id: str) -> ArrivalRun:
    """One exposure's arrival: its run described and, while it runs, its ``state`` read
    (missing sensors, embargo end); NOT_ARRIVED when there is no arrival workflow."""
    wid = arrival.arrival_workflow_id(instrument, obs_id)
    try:
        desc = await client.get_workflow_handle(wid).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return ArrivalRun(wid, NOT_ARRIVED)
    state = None
    if desc.status == WorkflowExecutionStatus.RUNNING:
        handle = client.get_workflow_handle(wid, run_id=desc.run_id)
        try:
            state = await handle.query(_STATE_QUERY, result_type=ArrivalState, rpc_timeout=_QUERY_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError):
            # No worker answered in time: the state from visibility alone.
            state = None
    return await arrival_run(client, desc, state)


async def arrival_run(
    client: Client, execution: WorkflowExecution, state: ArrivalState | None = None
) -> ArrivalRun:
    """An arrival run's state from its listing (or description), its failure message if it
    failed, and its ``state`` query when one was read."""
    status = (execution.status or WorkflowExecutionStatus.RUNNING).name.lower()
    step = execution.typed_search_attributes.get(SA_STEP) or "-"
    run = ArrivalRun(execution.id, _arrival_state(status, step), status, step, execution.start_time)
    if status in ("failed", "timed_out"):
        error = await failure_message(client, execution.id, execution.run_id)
        run = replace(run, error=error)
        if found := _MISSING.search(error):
            run = replace(run, missing=int(found[1]), expected=int(found[2]))
    if state is not None:
        end = datetime.fromisoformat(state.embargo_end) if state.embargo_end else None
        run = replace(
            run,
            embargo_end=end,
            missing=len(state.missing) if state.expected is not None else None,
            expected=state.expected,
            raws_ingested=state.raws_ingested,
        )
    return run


def _arrival_state(status: str, step: str) -> str:
    if status == "running":
        if step == arrival.EMBARGOED:
            return ARRIVAL_EMBARGOED
        return ARRIVAL_STARTED if step == arrival.STARTED else ARRIVAL_ARRIVING
    if status == "completed":
        return ARRIVAL_STARTED
    if status == "failed" and step == arrival.INCOMPLETE:
        return ARRIVAL_INCOMPLETE
    return ARRIVAL_STOPPED


def with_embargo_ends(
    runs: dict[str, ArrivalRun], ends: Mapping[str, datetime | None]
) -> dict[str, ArrivalRun]:
    """``runs`` with each embargoed run's end filled in from ``ends`` (by obs_id) where unknown."""
    return {
        obs_id: replace(run, embargo_end=ends.get(obs_id))
        if run.state == ARRIVAL_EMBARGOED and run.embargo_end is None
        else run
        for obs_id, run in runs.items()
    }


async def day_arrivals_with_ends(
    client: Client, settings: Settings, instrument: str, day_obs: int
) -> dict[str, ArrivalRun]:
    """``day_arrivals``, with the end of each embargoed one from the embargo butler (one
    query per embargo rule for the day, and only when some arrival is embargoed)."""
    runs = await day_arrivals(client, instrument, day_obs)
    if not any(run.state == ARRIVAL_EMBARGOED for run in runs.values()):
        return runs

    def ends() -> dict[str, datetime | None]:
        from lsst.daf.butler import Butler

        from unembargo.adapters.butler_inventory import day_embargo_ends

        with Butler.from_config(settings.embargo_butler, writeable=False) as embargo:
            return day_embargo_ends(embargo, instrument, day_obs, settings.rules())

    try:
        found = await asyncio.to_thread(ends)
    except Exception as err:
        raise SourceUnavailable("butler", err) from err
    return with_embargo_ends(runs, found)
