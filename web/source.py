"""Where the page's facts come from: Temporal visibility (counts and one page of a listing),
a workflow's history and description, the project's database (locations, copies), and the
client's own status and retry functions.

``Source`` is what the views ask; ``TemporalSource`` answers from the real services, and the
unit tests answer from a small fake.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.api.common.v1 import WorkflowExecution as ExecutionRef
from temporalio.api.enums.v1 import EventType, PendingActivityState, TaskQueueType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    GetWorkflowExecutionHistoryReverseRequest,
    ResetWorkflowExecutionRequest,
)
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from unembargo.client import locations as client_locations
from unembargo.client.ccat import package_view
from unembargo.client.rawintegrity import decide as decide_raw
from unembargo.client.retry import retry_exposure
from unembargo.client.status import receipt_summary, run_status
from unembargo.engine.connection import connect
from unembargo.models import carousel, ccat, names, rawintegrity
from unembargo.models.names import SA_INSTRUMENT, SA_OBS_ID
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.web_actions import WebAction
from unembargo.web.flows import Flow, flow_of_type

# Counts are reused for WebConfig.count_ttl seconds: an overview, its flow pages and a metrics
# scrape within seconds of each other ask visibility once. At most this many are kept.
_CACHED_COUNTS = 4096
# A running unit's state query is answered by a worker; none may be up.
_QUERY_TIMEOUT = timedelta(seconds=3)
# Items of a list field shown; the rest are counted.
_LIST_ITEMS = 20


@dataclass(frozen=True)
class Listed:
    """One run as a listing returns it: what visibility knows, nothing more."""

    workflow_id: str
    run_id: str
    workflow_type: str
    status: str  # running | completed | failed | terminated | canceled | timed_out
    attributes: dict[str, Any]
    started: datetime | None
    closed: datetime | None


@dataclass(frozen=True)
class FailureView:
    """A failure as an operator reads it: its type, message and stack trace."""

    type: str
    message: str
    stack_trace: str = ""


@dataclass(frozen=True)
class StepView:
    """One step of a unit's run: done or not, when, what its receipt says, its attempts."""

    step: str
    activity: str
    done: bool = False
    when: datetime | None = None
    summary: str = ""
    attempts: int = 0
    last_failure: str | None = None


@dataclass(frozen=True)
class PendingView:
    step: str
    activity: str
    attempt: int
    state: str
    next_attempt: datetime | None
    failure: FailureView | None


@dataclass(frozen=True)
class UnitDetail:
    """Everything the unit page shows of one workflow's latest run."""

    listed: Listed
    steps: list[StepView] = field(default_factory=list)
    pending: PendingView | None = None
    failure: FailureView | None = None
    waiting_for: str | None = None
    # The unit's files and copies, where the flow keeps them in the database.
    copies: list[dict[str, Any]] = field(default_factory=list)
    # A running unit's own account of itself (its state query): the plain fields.
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ActionResult:
    action: str  # restarted | reset | signalled | none
    run_id: str | None
    message: str


class Source(Protocol):
    """What the views read and do."""

    async def count(self, query: str) -> int: ...

    async def count_by_status(self, query: str) -> dict[str, int]: ...

    async def page(self, query: str, size: int, token: bytes | None) -> tuple[list[Listed], bytes | None]: ...

    async def last_failure(self, workflow_id: str, run_id: str) -> FailureView | None: ...

    async def unit(self, workflow_id: str) -> UnitDetail | None: ...

    async def locations(self) -> tuple[list[Any], list[Any]]: ...

    async def retry(self, workflow_id: str, reason: str) -> ActionResult: ...

    async def reset(self, workflow_id: str, step: str, reason: str) -> ActionResult: ...

    async def signal(self, workflow_id: str, decision: str) -> ActionResult: ...

    async def record(self, action: WebAction) -> None: ...

    async def recorded(self, workflow_id: str | None, limit: int) -> list[WebAction]: ...


def _status(value: WorkflowExecutionStatus | None) -> str:
    return (value or WorkflowExecutionStatus.RUNNING).name.lower()


def listed(execution: WorkflowExecution) -> Listed:
    """A run as the page keeps it: its id, type, status and search attributes."""
    attrs = {pair.key.name: pair.value for pair in execution.typed_search_attributes}
    return Listed(
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_type=execution.workflow_type,
        status=_status(execution.status),
        attributes=attrs,
        started=execution.start_time,
        closed=execution.close_time,
    )


async def failure_view(client: Client, failure: Failure) -> FailureView:
    """The innermost cause of ``failure`` (the error an activity raised), decrypted when sealed."""
    copy = Failure()
    copy.CopyFrom(failure)
    try:
        error: BaseException | None = await client.data_converter.decode_failure(copy)
    except Exception as err:
        return FailureView(type(err).__name__, "the failure could not be decoded")
    chain: list[BaseException] = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = error.__cause__
    inner = next((e for e in reversed(chain) if isinstance(e, ApplicationError)), chain[-1])
    kind = inner.type if isinstance(inner, ApplicationError) and inner.type else type(inner).__name__
    raw = inner.failure if isinstance(inner, FailureError) else None
    message = inner.message if isinstance(inner, FailureError) else str(inner)
    return FailureView(kind, message, raw.stack_trace if raw is not None else "")


# History events that carry the failure an operator wants to see, newest first.
_FAILURE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "workflow_execution_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
}


class TemporalSource:
    """The real sources: one Temporal client (made on first use) and the project's database."""

    def __init__(self, settings: Settings, client: Client | None = None, count_ttl: float = 5.0) -> None:
        self.settings = settings
        self._client = client
        self._lock = asyncio.Lock()
        self._ttl = count_ttl
        self._counted: dict[str, tuple[float, Any]] = {}
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        """The project's database (migrated on first use)."""
        if self._engine is None:
            self._engine = db_connect(self.settings.database_url.get_secret_value())
        return self._engine

    async def client(self) -> Client:
        async with self._lock:
            if self._client is None:
                self._client = await connect(self.settings)
            return self._client

    async def count(self, query: str) -> int:
        return int(await self._cached(query, self._count))

    async def count_by_status(self, query: str) -> dict[str, int]:
        """How many runs match, by ExecutionStatus ("Running", "Completed", "Failed", ...)."""
        found: dict[str, int] = await self._cached(f"{query} GROUP BY ExecutionStatus", self._groups)
        return found

    async def _count(self, query: str) -> int:
        return (await (await self.client()).count_workflows(query)).count

    async def _groups(self, query: str) -> dict[str, int]:
        found = await (await self.client()).count_workflows(query)
        return {str(g.group_values[0]): g.count for g in found.groups if g.group_values}

    async def _cached(self, query: str, ask: Callable[[str], Awaitable[Any]]) -> Any:
        """``ask(query)``, or its answer of less than ``count_ttl`` seconds ago."""
        now = time.monotonic()
        hit = self._counted.get(query)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        value = await ask(query)
        if len(self._counted) > _CACHED_COUNTS:
            self._counted = {q: v for q, v in self._counted.items() if now - v[0] < self._ttl}
        self._counted[query] = (now, value)
        return value

    async def page(self, query: str, size: int, token: bytes | None) -> tuple[list[Listed], bytes | None]:
        listing = (await self.client()).list_workflows(query, page_size=size, next_page_token=token)
        await listing.fetch_next_page()
        return [listed(e) for e in listing.current_page or []], listing.next_page_token

    async def last_failure(self, workflow_id: str, run_id: str) -> FailureView | None:
        """The run's failure, from the last events of its history (read backwards, a few)."""
        client = await self.client()
        resp = await client.workflow_service.get_workflow_execution_history_reverse(
            GetWorkflowExecutionHistoryReverseRequest(
                namespace=client.namespace,
                execution=ExecutionRef(workflow_id=workflow_id, run_id=run_id),
                maximum_page_size=5,
            )
        )
        for event in resp.history.events:
            kind = _FAILURE_EVENTS.get(event.event_type)
            if kind is not None:
                return await failure_view(client, getattr(event, kind).failure)
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
                reason = event.workflow_execution_terminated_event_attributes.reason
                return FailureView("Terminated", reason)
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
                return FailureView("TimedOut", "the run timed out")
        return None

    async def unit(self, workflow_id: str) -> UnitDetail | None:
        client = await self.client()
        try:
            desc = await client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        row = listed(desc)
        found = flow_of_type(row.workflow_type)
        handle = client.get_workflow_handle(workflow_id, run_id=desc.run_id)
        history = await handle.fetch_history()
        steps, failure = await _timeline(client, found, history.events)
        waiting = None
        if found is not None and found.name == "unembargo":
            exposure = await run_status(client, handle, desc)
            steps = [
                StepView(s.step, s.step, s.done, s.when, s.summary, s.attempts, s.last_failure)
                for s in exposure.steps
            ]
            waiting = exposure.waiting_for
        pending = await _pending(client, found, desc) if row.status == "running" else None
        copies = await asyncio.to_thread(self._copies, found, row)
        state: dict[str, Any] = {}
        if (
            row.status == "running"
            and found is not None
            and found.state_query
            and await _polled(client, desc.task_queue)
        ):
            try:
                answer = await handle.query(found.state_query, rpc_timeout=_QUERY_TIMEOUT)
            except (RPCError, WorkflowQueryFailedError):
                answer = None  # no worker answered in time: the page goes without
            state = plain_fields(answer)
        return UnitDetail(row, steps, pending, failure, waiting, copies, state)

    def _copies(self, found: Flow | None, row: Listed) -> list[dict[str, Any]]:
        """A ccat package's copies (PhysicalCopy rows, by location); other flows keep none."""
        prefix = _prefix(ccat.package_workflow_id)
        if found is None or found.name != "ccat" or not row.workflow_id.startswith(prefix):
            return []
        package = row.workflow_id.removeprefix(prefix)
        with Session(self.engine()) as session:
            view = package_view(session, package)
        if view is None:
            return []
        return [asdict(c) for c in view.copies]

    async def locations(self) -> tuple[list[Any], list[Any]]:
        """Every location, and every queue's pollers (client/locations.py)."""
        rows = await asyncio.to_thread(client_locations.list_locations, self.settings)
        health = await client_locations.health(await self.client(), self.settings)
        return rows, health

    async def retry(self, workflow_id: str, reason: str) -> ActionResult:
        """An exposure: ``unembargo retry``'s restart or reset; any other unit: a reset to its
        failing activity when it is stuck (the flow's own command restarts a closed one)."""
        client = await self.client()
        desc = await client.get_workflow_handle(workflow_id).describe()
        row = listed(desc)
        if row.workflow_type == names.EXPOSURE_WORKFLOW:
            instrument, obs_id = row.attributes.get(SA_INSTRUMENT.name), row.attributes.get(SA_OBS_ID.name)
            if not instrument or not obs_id:
                return ActionResult("none", None, "the exposure's instrument and obs_id are not known")
            out = await retry_exposure(client, self.settings, instrument, obs_id, reason)
            return ActionResult(out.action, out.run_id, out.message)
        if row.status != "running":
            return ActionResult("none", None, f"{row.status}: restart it with its flow's own command")
        pending = desc.raw_description.pending_activities
        if not pending or pending[0].attempt <= 1:
            return ActionResult("none", None, "running and not failing: nothing to retry")
        return await self._reset_before(
            client, row, lambda a: a.activity_id == pending[0].activity_id, reason
        )

    async def reset(self, workflow_id: str, step: str, reason: str) -> ActionResult:
        """Reset the latest run to the workflow task that first scheduled ``step``'s activity."""
        client = await self.client()
        row = listed(await client.get_workflow_handle(workflow_id).describe())
        found = flow_of_type(row.workflow_type)
        activities = {a for a, s in (found.step_of_activity if found else {}).items() if s == step}
        if not activities:
            return ActionResult("none", None, f"no step {step!r} in this flow")
        return await self._reset_before(
            client, row, lambda a: a.activity_type.name in activities, reason, True
        )

    async def _reset_before(
        self, client: Client, row: Listed, match: Any, reason: str, first: bool = False
    ) -> ActionResult:
        history = await client.get_workflow_handle(row.workflow_id, run_id=row.run_id).fetch_history()
        scheduled = [
            e.activity_task_scheduled_event_attributes
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
            and match(e.activity_task_scheduled_event_attributes)
        ]
        if not scheduled:
            return ActionResult("none", None, "the run never scheduled that step")
        at = scheduled[0] if first else scheduled[-1]
        resp = await client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=ExecutionRef(workflow_id=row.workflow_id, run_id=row.run_id),
                reason=reason,
                workflow_task_finish_event_id=at.workflow_task_completed_event_id,
                request_id=str(uuid.uuid4()),
            )
        )
        return ActionResult("reset", resp.run_id, f"reset to before {at.activity_type.name}")

    async def record(self, action: WebAction) -> None:
        """Keep ``action`` in the web_action table."""

        def write() -> None:
            with Session(self.engine()) as session:
                session.add(action)
                session.commit()
                session.refresh(action)

        await asyncio.to_thread(write)

    async def recorded(self, workflow_id: str | None, limit: int) -> list[WebAction]:
        """The latest actions, newest first (of one unit, given its workflow id)."""

        def read() -> list[WebAction]:
            query = select(WebAction).order_by(col(WebAction.id).desc()).limit(limit)
            if workflow_id is not None:
                query = query.where(WebAction.workflow_id == workflow_id)
            with Session(self.engine()) as session:
                return list(session.exec(query).all())

        return await asyncio.to_thread(read)

    async def signal(self, workflow_id: str, decision: str) -> ActionResult:
        """An operator's decision to a unit waiting for one (carousel, rawintegrity)."""
        client = await self.client()
        row = listed(await client.get_workflow_handle(workflow_id).describe())
        handle = client.get_workflow_handle(workflow_id)
        if row.workflow_type == carousel.CAROUSEL_WORKFLOW and decision in carousel.DECISIONS:
            await handle.signal(carousel.DECIDE_SIGNAL, carousel.Decision(decision))
        elif row.workflow_type == rawintegrity.FILE_WORKFLOW and decision in decisions(row.workflow_type):
            # The file's LFN is its workflow id's tail (models/rawintegrity.file_workflow_id).
            await decide_raw(
                client, workflow_id.removeprefix(rawintegrity.file_workflow_id("x")[:-1]), decision
            )
        else:
            return ActionResult("none", None, f"no decision {decision!r} for a {row.workflow_type}")
        return ActionResult("signalled", row.run_id, f"decision {decision} sent")


def _prefix(workflow_id: Callable[[str], str]) -> str:
    """What a flow's id function puts before the unit's name (its LFN, its package)."""
    return workflow_id("x").removesuffix("x")


async def _polled(client: Client, queue: str) -> bool:
    """Whether some worker polls ``queue`` for workflow tasks: else a query waits its whole timeout."""
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return bool(resp.pollers)


def plain_fields(answer: object) -> dict[str, Any]:
    """A state query's answer as the page shows it: numbers, names, flags and short lists of them;
    nested records are counted, not shown."""
    if not isinstance(answer, dict):
        return {}
    found: dict[str, Any] = {}
    for key, value in answer.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            found[key] = value
        elif isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value):
            more = len(value) - _LIST_ITEMS
            found[key] = ", ".join(map(str, value[:_LIST_ITEMS])) + (f" (+{more} more)" if more > 0 else "")
        elif isinstance(value, (list, dict)):
            found[key] = f"{len(value)} entries"
    return found


def decisions(workflow_type: str) -> tuple[str, ...]:
    """The operator decisions a unit of this type takes."""
    if workflow_type == carousel.CAROUSEL_WORKFLOW:
        return tuple(d for d in carousel.DECISIONS if d != carousel.CHANGE)
    if workflow_type == rawintegrity.FILE_WORKFLOW:
        return (rawintegrity.RETRY, rawintegrity.GIVE_UP)
    return ()


async def _timeline(
    client: Client, found: Flow | None, events: Sequence[HistoryEvent]
) -> tuple[list[StepView], FailureView | None]:
    """Each activity the run scheduled, in order: done when, its receipt's summary, attempts;
    and the run's (or its last activity's) failure."""
    of = dict(found.step_of_activity) if found else {}
    scheduled: dict[int, str] = {}
    rows: dict[str, dict[str, Any]] = {}
    failure: Failure | None = None
    # A run ended from outside (terminated) or by its own timeout: no failure event, but a reason.
    ended: FailureView | None = None
    for event in events:
        kind = event.WhichOneof("attributes")
        if kind == "activity_task_scheduled_event_attributes":
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = name
            rows.setdefault(name, {"step": of.get(name, name), "attempts": 0})
        elif kind == "activity_task_started_event_attributes":
            started = event.activity_task_started_event_attributes
            rows[scheduled.get(started.scheduled_event_id, "")]["attempts"] += started.attempt
        elif kind == "activity_task_completed_event_attributes":
            completed = event.activity_task_completed_event_attributes
            name = scheduled.get(completed.scheduled_event_id, "")
            values = await client.data_converter.decode(list(completed.result.payloads))
            receipt = values[0] if values and isinstance(values[0], dict) else {}
            rows[name].update(done=True, when=event.event_time.ToDatetime(tzinfo=UTC))
            rows[name]["summary"] = receipt_summary(rows[name]["step"], receipt) or _brief(receipt)
        elif kind == "activity_task_failed_event_attributes":
            failed = event.activity_task_failed_event_attributes
            failure = failed.failure
            rows[scheduled.get(failed.scheduled_event_id, "")]["failed"] = failure
        elif kind == "workflow_execution_failed_event_attributes":
            failure = event.workflow_execution_failed_event_attributes.failure
        elif kind == "workflow_execution_terminated_event_attributes":
            ended = FailureView("Terminated", event.workflow_execution_terminated_event_attributes.reason)
        elif kind == "workflow_execution_timed_out_event_attributes":
            ended = FailureView("TimedOut", "the run timed out")
    steps = []
    for name, row in rows.items():
        last = row.get("failed")
        text = None
        if last is not None:
            seen = await failure_view(client, last)
            text = f"{seen.type}: {seen.message}"
        steps.append(
            StepView(
                step=row["step"],
                activity=name,
                done=row.get("done", False),
                when=row.get("when"),
                summary=row.get("summary", ""),
                attempts=row["attempts"],
                last_failure=text,
            )
        )
    return steps, ended or (await failure_view(client, failure) if failure is not None else None)


def _brief(receipt: dict[str, Any]) -> str:
    """A receipt's plain fields (numbers, names, flags) on one line; nested values left out."""
    shown = [f"{k}={v}" for k, v in receipt.items() if isinstance(v, (int, float, bool)) and v is not None]
    return ", ".join(shown[:8])


async def _pending(client: Client, found: Flow | None, desc: Any) -> PendingView | None:
    for act in desc.raw_description.pending_activities:
        name = act.activity_type.name
        failure = await failure_view(client, act.last_failure) if act.HasField("last_failure") else None
        state = PendingActivityState.Name(act.state).removeprefix("PENDING_ACTIVITY_STATE_").lower()
        return PendingView(
            step=(found.step_of_activity.get(name, name) if found else name),
            activity=name,
            attempt=act.attempt,
            state=state,
            next_attempt=act.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
            if act.HasField("next_attempt_schedule_time")
            else None,
            failure=failure,
        )
    return None
