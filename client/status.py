"""``unembargo status``: an exposure's step timeline, read from its workflow history.

The history answers for any run, running or closed, with no worker up: each step is
done when its activity completed (at that time, with that receipt); a running run
adds its pending activity (attempt, last failure, next attempt) from ``describe``.

    >>> asyncio.run(exposure_status(client, "LSSTCam", "MC_O_20251231_000010"))  # doctest: +SKIP
    ExposureStatus(workflow_id='unembargo-LSSTCam-MC_O_20251231_000010', status='running', ...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from unembargo.engine.codec import failure_text
from unembargo.models import names
from unembargo.models.exposure import STEP_OF_ACTIVITY, STEPS, Step
from unembargo.models.names import SA_STEP


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
