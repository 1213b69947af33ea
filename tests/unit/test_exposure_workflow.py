"""The exposure workflow's logic (workflows/exposure.py) on Temporal's time-skipping test server.

Each step's activity is a stub registered under the step's real activity name: it counts its
calls, records where and when it ran, and returns a receipt or raises what the test asks.
Durable timers and retry backoff skip ahead, so hours of waiting take milliseconds.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.models import names
from unembargo.models.errors import RERUN, DestinationConflict, DestinationFull, IncompleteExposure
from unembargo.models.exposure import (
    DESTINATION,
    STEP_RETRY,
    STEPS,
    ExportReceipt,
    Exposure,
    ExposureInput,
    FileReceipt,
    IngestInput,
    IngestReceipt,
    Policy,
    RegisterInput,
    RegisterReceipt,
    Step,
    StepInput,
    StepQueues,
    TagReceipt,
    ZipReceipt,
)
from unembargo.models.names import SA_STEP, STEP_DONE, STEP_WAITING
from unembargo.models.schedule import SelectInput, SelectResult
from unembargo.workflows.exposure import ExposureWorkflow
from unembargo.workflows.select import SELECT_RETRY, SelectAndStartWorkflow

EXPOSURE = Exposure("LSSTCam", 20251231, "MC_O_20251231_000010", 2025123100010)
ZIP = FileReceipt("LSSTCam/20251231/MC_O_20251231_000010.zip", 1000, "0" * 32, "0000beef")
YAML = FileReceipt("LSSTCam/20251231/MC_O_20251231_000010_dimensions.yaml", 100, "1" * 32, "0000cafe")
TRACTS = [5, 6]
DATASETS = names.exposure_datasets(EXPOSURE.instrument, EXPOSURE.day_obs, EXPOSURE.obs_id, TRACTS)
RECEIPTS: dict[Step, Any] = {
    Step.ZIP: ZipReceipt(ZIP, members=412, raws=205, already_done=False),
    Step.EXPORT: ExportReceipt(YAML, records=40, tracts=TRACTS, already_done=False),
    Step.INGEST: IngestReceipt(datasets=205, already_done=False),
    Step.REGISTER: RegisterReceipt(files=2, datasets=DATASETS, already_done=False),
    Step.TAG: TagReceipt(DATASETS[-1], f"{names.BACKUP_KEY}={names.BACKUP_VALUE}", already_done=False),
}
# What each step must be given, from the receipts of the steps before it.
INPUTS: dict[Step, Any] = {
    Step.ZIP: StepInput(EXPOSURE),
    Step.EXPORT: StepInput(EXPOSURE),
    Step.INGEST: IngestInput(EXPOSURE, ZIP),
    Step.REGISTER: RegisterInput(EXPOSURE, ZIP, YAML, TRACTS),
    Step.TAG: StepInput(EXPOSURE),
}
# Long waits, as in production: the test server skips them.
POLICY = Policy(heartbeat_s=30, incomplete_wait_s=3600, incomplete_poll_s=300)
# A bound on any one run, in real seconds: a workflow that never ends fails the test, not CI.
RESULT_TIMEOUT = 30


@dataclass(frozen=True)
class Call:
    step: Step
    arg: Any
    queue: str
    attempt: int
    # Server time (skipped ahead by timers and backoff) at which this attempt started.
    started: datetime


# A step's behaviour: given how many times it was called before, an error to raise or None.
Raises = Callable[[int], BaseException | None]


@dataclass
class Stubs:
    """The five step activities, as stubs: what they raise, and every call they got."""

    raises: dict[Step, Raises] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def of(self, step: Step) -> list[Call]:
        return [c for c in self.calls if c.step == step]

    def steps(self) -> list[Step]:
        return [c.step for c in self.calls]

    def activities(self) -> list[Callable[..., Any]]:
        return [self._stub(step) for step in STEPS]

    def _stub(self, step: Step) -> Callable[..., Any]:
        spec = STEPS[step]

        async def stub(arg: Any) -> Any:
            info = activity.info()
            before = len(self.of(step))
            self.calls.append(Call(step, arg, info.task_queue, info.attempt, info.started_time))
            error = self.raises.get(step, lambda _: None)(before)
            if error is not None:
                raise error
            return RECEIPTS[step]

        # The spec's types, so the stub's argument is decoded as the real activity's is.
        stub.__annotations__ = {"arg": spec.input, "return": spec.receipt}
        return activity.defn(name=spec.activity)(stub)


def queues_of(queue: str) -> StepQueues:
    """A queue per kind of location, both unlike the workflow queue."""
    return {step: f"{queue}-{spec.location}" for step, spec in STEPS.items()}


@asynccontextmanager
async def workers(env: WorkflowEnvironment, queue: str, stubs: Stubs, **options: Any) -> AsyncIterator[None]:
    """The workflows on ``queue``; every stub on every step queue, so a step sent to the wrong
    queue still runs and shows in its call's ``queue`` instead of hanging the test."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(
            Worker(
                env.client,
                task_queue=queue,
                workflows=[ExposureWorkflow, SelectAndStartWorkflow],
                **options,
            )
        )
        for step_queue in sorted(set(queues_of(queue).values())):
            await stack.enter_async_context(
                Worker(env.client, task_queue=step_queue, activities=stubs.activities())
            )
        yield


async def start(
    env: WorkflowEnvironment, queue: str, policy: Policy = POLICY, inp: ExposureInput | None = None
) -> WorkflowHandle[Any, Any]:
    # By name, as the starter does; the result and the `state` query read back as plain dicts.
    return await env.client.start_workflow(
        names.EXPOSURE_WORKFLOW,
        inp or ExposureInput(EXPOSURE, queues_of(queue), policy),
        id=f"unembargo-LSSTCam-{queue}",
        task_queue=queue,
    )


async def result(handle: WorkflowHandle[Any, Any]) -> Any:
    return await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)


async def failure(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """The run's failure: the ApplicationError it ended with."""
    with pytest.raises(WorkflowFailureError) as failed:
        await result(handle)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


async def step_attribute(handle: WorkflowHandle[Any, Any]) -> str | None:
    return (await handle.describe()).typed_search_attributes.get(SA_STEP)


async def poll(check: Callable[[], Any], what: str, timeout: float = 20) -> None:
    """Until ``check()`` (awaited if need be) is true, in real time; fail after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


# ---------------------------------------------------------------- the happy path


async def test_five_steps_run_once_in_order_on_their_queues(env: WorkflowEnvironment, queue: str) -> None:
    stubs = Stubs()
    async with workers(env, queue, stubs):
        handle = await start(env, queue)
        state = await result(handle)
        queried = await handle.query("state")
        attribute = await step_attribute(handle)

    assert stubs.steps() == list(Step)
    expected_queues = queues_of(queue)
    for call in stubs.calls:
        assert call.queue == expected_queues[call.step], call
        assert call.arg == INPUTS[call.step], call
        assert call.attempt == 1
    # The `state` query and the result both hold every receipt.
    for shown in (queried, state):
        for step in Step:
            assert shown["steps"][step]["done"] and shown["steps"][step]["when"], step
            assert shown["steps"][step]["receipt"] == asdict(RECEIPTS[step]), step
        assert (shown["obs_id"], shown["current"], shown["waiting_for"]) == (EXPOSURE.obs_id, None, None)
    assert attribute == STEP_DONE


async def test_instrument_day_and_obs_id_are_search_attributes(env: WorkflowEnvironment, queue: str) -> None:
    stubs = Stubs()
    async with workers(env, queue, stubs):
        handle = await start(env, queue)
        await result(handle)
        found = (await handle.describe()).typed_search_attributes
    assert found.get(names.SA_INSTRUMENT) == EXPOSURE.instrument
    assert found.get(names.SA_DAY_OBS) == EXPOSURE.day_obs
    assert found.get(names.SA_OBS_ID) == EXPOSURE.obs_id


# ---------------------------------------------------------------- an incomplete exposure


def incomplete(times: int | None) -> Raises:
    """IncompleteExposure on the first ``times`` calls (None: on every call)."""
    return lambda before: (
        IncompleteExposure("found 200 of 205 raws; missing R22_S11")
        if times is None or before < times
        else None
    )


async def test_incomplete_exposure_waits_on_a_timer_then_completes(
    env: WorkflowEnvironment, queue: str
) -> None:
    stubs = Stubs(raises={Step.ZIP: incomplete(3)})
    async with workers(env, queue, stubs):
        handle = await start(env, queue)

        async def waiting() -> bool:
            return await step_attribute(handle) == STEP_WAITING

        # Time does not skip until the test awaits the result: the first timer is still running.
        await poll(waiting, "the step search attribute to say waiting")
        state = await handle.query("state")
        assert state["waiting_for"] and "found 200 of 205" in state["waiting_for"]
        assert not state["steps"][Step.ZIP]["done"]
        assert stubs.steps() == [Step.ZIP]

        final = await result(handle)
        attribute = await step_attribute(handle)

    assert stubs.steps() == [Step.ZIP] * 4 + list(Step)[1:]
    zips = [c.started for c in stubs.of(Step.ZIP)]
    # Zip is tried again only when the poll timer fires, never sooner (no activity retries).
    gaps = [seconds(a, b) for a, b in zip(zips, zips[1:], strict=False)]
    assert all(POLICY.incomplete_poll_s <= gap < POLICY.incomplete_poll_s + 10 for gap in gaps), gaps
    assert all(c.attempt == 1 for c in stubs.of(Step.ZIP))
    assert final["waiting_for"] is None and attribute == STEP_DONE


async def test_incomplete_exposure_fails_named_after_the_wait_limit(
    env: WorkflowEnvironment, queue: str
) -> None:
    stubs = Stubs(raises={Step.ZIP: incomplete(None)})
    policy = Policy(incomplete_wait_s=900, incomplete_poll_s=300)
    async with workers(env, queue, stubs):
        error = await failure(await start(env, queue, policy))

    assert error.type == "IncompleteExposure" and error.non_retryable
    assert error.message.startswith("step zip: gave up after waiting 900s: found 200 of 205")
    assert RERUN in error.message
    # Tries at 0, 300, 600 and 900 s; the last one is past the limit. Nothing after zip ran.
    assert stubs.steps() == [Step.ZIP] * 4


# ---------------------------------------------------------------- bad input and transient failures


@pytest.mark.parametrize("failing", list(Step))
async def test_a_named_error_fails_the_run_under_its_name_and_later_steps_never_run(
    env: WorkflowEnvironment, queue: str, failing: Step
) -> None:
    conflict = DestinationConflict("LSSTCam/20251231/x.zip exists with other content; left untouched")
    stubs = Stubs(raises={failing: lambda _: conflict})
    async with workers(env, queue, stubs):
        handle = await start(env, queue)
        error = await failure(handle)
        state = await handle.query("state")

    assert error.type == "DestinationConflict" and error.non_retryable
    assert error.message == f"step {failing}: {conflict}"
    # Tried once (never retried), after each earlier step once; no later step.
    order = list(Step)
    assert stubs.steps() == order[: order.index(failing) + 1]
    assert [s for s in Step if state["steps"][s]["done"]] == order[: order.index(failing)]
    assert state["current"] == failing


@pytest.mark.parametrize("failing", list(Step))
async def test_a_transient_error_is_retried_and_nothing_else_reruns(
    env: WorkflowEnvironment, queue: str, failing: Step
) -> None:
    stubs = Stubs(raises={failing: lambda before: ConnectionError("refused") if before < 2 else None})
    async with workers(env, queue, stubs):
        await result(await start(env, queue))

    assert [c.step for c in stubs.calls if c.step != failing] == [s for s in Step if s != failing]
    attempts = stubs.of(failing)
    assert [c.attempt for c in attempts] == [1, 2, 3]
    # Backoff as STEP_RETRY says: 1 s, then 2 s.
    assert STEPS[failing].retry == STEP_RETRY and STEP_RETRY.initial_interval == timedelta(seconds=1)
    gaps = [seconds(a.started, b.started) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert 1 <= gaps[0] < 2 and 2 <= gaps[1] < 3, gaps


async def test_a_full_destination_is_retried_not_reported(env: WorkflowEnvironment, queue: str) -> None:
    stubs = Stubs(raises={Step.ZIP: lambda before: DestinationFull("no space left") if before < 1 else None})
    async with workers(env, queue, stubs):
        await result(await start(env, queue))
    assert stubs.steps() == [Step.ZIP, *Step]


BAD_INPUTS = {
    "obs_id with ..": Exposure("LSSTCam", 20251231, "../../etc", 1),
    "obs_id with /": Exposure("LSSTCam", 20251231, "MC_O/../../x", 1),
    "instrument with /": Exposure("LSST/../Cam", 20251231, "MC_O_20251231_000001", 1),
    "instrument with NUL": Exposure("LSSTCam\x00", 20251231, "MC_O_20251231_000001", 1),
    "day_obs not a date": Exposure("LSSTCam", 20251399, "MC_O_20251231_000001", 1),
    "negative exposure_id": Exposure("LSSTCam", 20251231, "MC_O_20251231_000001", -1),
}


@pytest.mark.parametrize("case", [*sorted(BAD_INPUTS), "queue with /", "no queue for tag"])
async def test_unsafe_names_fail_the_run_before_any_activity(
    env: WorkflowEnvironment, queue: str, case: str
) -> None:
    queues = queues_of(queue)
    if case == "queue with /":
        queues[Step.ZIP] = "unembargo-loc-../../x"
    if case == "no queue for tag":
        del queues[Step.TAG]
    inp = ExposureInput(BAD_INPUTS.get(case, EXPOSURE), queues, POLICY)
    stubs = Stubs()
    async with workers(env, queue, stubs):
        handle = await start(env, queue, inp=inp)
        error = await failure(handle)
        history = await handle.fetch_history()

    assert error.type == "InvalidName" and error.non_retryable, error
    assert "nothing was done" in error.message
    assert stubs.calls == []
    assert not [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]


# ---------------------------------------------------------------- replay


async def test_a_finished_step_is_never_run_again_when_another_worker_replays_the_run(
    env: WorkflowEnvironment, queue: str
) -> None:
    """Register fails until the first worker has gone; workers with no cache replay the whole
    history on every task (and leave no sticky queue behind), and find zip, export and ingest done."""
    gone = asyncio.Event()
    stubs = Stubs(raises={Step.REGISTER: lambda _: None if gone.is_set() else ConnectionError("refused")})
    async with workers(env, queue, stubs, max_cached_workflows=0):
        handle = await start(env, queue)
        await poll(lambda: len(stubs.of(Step.REGISTER)) >= 1, "register to be tried")
    gone.set()
    async with workers(env, queue, stubs, max_cached_workflows=0):
        await result(handle)

    assert [c.step for c in stubs.calls if c.step != Step.REGISTER] == list(Step)[:3] + [Step.TAG]
    assert stubs.of(Step.REGISTER)[-1].attempt > 1


# ---------------------------------------------------------------- the schedule's action


@dataclass
class Selection:
    """A stub of the schedule's select-and-start activity."""

    fails: int = 0
    calls: list[tuple[SelectInput, str, int]] = field(default_factory=list)

    def activity(self) -> Callable[..., Any]:
        @activity.defn(name=names.SELECT_ACTIVITY)
        async def select_and_start(inp: SelectInput) -> SelectResult:
            info = activity.info()
            self.calls.append((inp, info.task_queue, info.attempt))
            if len(self.calls) <= self.fails:
                raise ConnectionError("embargo butler unreachable")
            return SelectResult(selected=3, started=2, existing={"completed": 1})

        return select_and_start


async def _select(env: WorkflowEnvironment, queue: str, selection: Selection) -> WorkflowHandle[Any, Any]:
    async with (
        Worker(env.client, task_queue=queue, workflows=[SelectAndStartWorkflow]),
        Worker(env.client, task_queue=f"{queue}-{DESTINATION}", activities=[selection.activity()]),
    ):
        handle = await env.client.start_workflow(
            SelectAndStartWorkflow.run,
            SelectInput(queue=f"{queue}-{DESTINATION}", window_s=80 * 3600.0),
            id=f"select-{queue}",
            task_queue=queue,
        )
        try:
            await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        except WorkflowFailureError:
            pass
    return handle


async def test_select_and_start_runs_the_selection_on_its_queue(env: WorkflowEnvironment, queue: str) -> None:
    selection = Selection()
    handle = await _select(env, queue, selection)
    assert await handle.result() == SelectResult(selected=3, started=2, existing={"completed": 1})
    [(inp, ran_on, attempt)] = selection.calls
    assert (inp.queue, inp.window_s, attempt) == (f"{queue}-{DESTINATION}", 80 * 3600.0, 1)
    assert ran_on == inp.queue


async def test_select_and_start_gives_up_after_its_attempts(env: WorkflowEnvironment, queue: str) -> None:
    """A run that cannot select fails, visibly, and leaves the next run to try again."""
    selection = Selection(fails=100)
    handle = await _select(env, queue, selection)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert isinstance(SELECT_RETRY, RetryPolicy) and SELECT_RETRY.maximum_attempts == 5
    assert [attempt for _, _, attempt in selection.calls] == [1, 2, 3, 4, 5]
