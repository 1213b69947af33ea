"""One durable workflow per exposure: zip, export, ingest, register, tag.

Deterministic code only. Each step is an activity that checks its own "done
when" first, so a replayed, retried or restarted workflow resumes at the first
step that is not done and never repeats a side effect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from opentelemetry import trace

    from unembargo.models import names
    from unembargo.models.errors import NON_RETRYABLE, RERUN
    from unembargo.models.exposure import (
        ExportReceipt,
        Exposure,
        ExposureInput,
        ExposureState,
        IngestInput,
        IngestReceipt,
        RegisterInput,
        RegisterReceipt,
        StepInput,
        StepState,
        TagReceipt,
        ZipReceipt,
        check_input,
    )

T = TypeVar("T")

SA_INSTRUMENT = SearchAttributeKey.for_keyword(names.SA_INSTRUMENT)
SA_DAY_OBS = SearchAttributeKey.for_int(names.SA_DAY_OBS)
SA_OBS_ID = SearchAttributeKey.for_keyword(names.SA_OBS_ID)
SA_STEP = SearchAttributeKey.for_keyword(names.SA_STEP)

# Transient failures (network, 5xx, database busy, service down) retry forever with
# backoff, visibly in the UI; bad input fails at once under its error's name.
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    non_retryable_error_types=NON_RETRYABLE,
)

# Upper bounds on one attempt of each step. The zip moves a whole focal plane
# (205 files, up to a few GB); the others are a handful of service calls.
STEP_TIMEOUT = {
    "zip": timedelta(hours=1),
    "export": timedelta(minutes=10),
    "ingest": timedelta(minutes=30),
    "register": timedelta(minutes=10),
    "tag": timedelta(minutes=5),
}

# Patch ids (workflow.patched): runs recorded before a change replay without it.
# Marks the `step` search attribute "waiting" while an incomplete exposure waits.
WAITING_STEP_PATCH = "step-waiting"


@workflow.defn(name=names.EXPOSURE_WORKFLOW)
class ExposureWorkflow:
    def __init__(self) -> None:
        self._state = ExposureState(
            obs_id="", current=None, steps={step: StepState() for step in names.STEPS}
        )

    @workflow.query
    def state(self) -> ExposureState:
        """Each step: done or not, when, and its receipt."""
        return self._state

    @workflow.run
    async def run(self, inp: ExposureInput) -> ExposureState:
        _checked(inp)
        exp = inp.exposure
        self._state.obs_id = exp.obs_id
        workflow.upsert_search_attributes(
            [
                SA_INSTRUMENT.value_set(exp.instrument),
                SA_DAY_OBS.value_set(exp.day_obs),
                SA_OBS_ID.value_set(exp.obs_id),
            ]
        )
        with _span("exposure", exp, workflow_id=workflow.info().workflow_id):
            zipped = await _traced(exp, "zip", self._zip_when_complete(inp))
            exported = await _traced(exp, "export", self._step(inp, "export", StepInput(exp), ExportReceipt))
            await _traced(
                exp, "ingest", self._step(inp, "ingest", IngestInput(exp, zipped.file), IngestReceipt)
            )
            register = RegisterInput(exp, zipped.file, exported.file, exported.tracts)
            await _traced(exp, "register", self._step(inp, "register", register, RegisterReceipt))
            await _traced(exp, "tag", self._step(inp, "tag", StepInput(exp), TagReceipt))
        self._state.current = None
        workflow.upsert_search_attributes([SA_STEP.value_set(names.STEP_DONE)])
        return self._state

    async def _zip_when_complete(self, inp: ExposureInput) -> ZipReceipt:
        """Zip, waiting on a durable timer while raws are still missing."""
        deadline = workflow.now() + timedelta(seconds=inp.policy.incomplete_wait_s)
        while True:
            try:
                receipt: ZipReceipt = await self._step(
                    inp, "zip", StepInput(inp.exposure), ZipReceipt, wrap=False
                )
                self._state.waiting_for = None
                return receipt
            except ActivityError as err:
                cause = err.cause
                incomplete = isinstance(cause, ApplicationError) and cause.type == "IncompleteExposure"
                if not incomplete:
                    raise _named(err, "zip") from err
                if workflow.now() >= deadline:
                    raise ApplicationError(
                        f"step zip: gave up after waiting {inp.policy.incomplete_wait_s:.0f}s: "
                        f"{cause.message} Once the raws are in, {RERUN}.",
                        type="IncompleteExposure",
                        non_retryable=True,
                    ) from err
                self._state.waiting_for = str(cause.message)
                self._mark_waiting()
                await workflow.sleep(timedelta(seconds=inp.policy.incomplete_poll_s))

    def _mark_waiting(self) -> None:
        """Show "waiting" in the UI, so an exposure waiting for raws is not taken for one stuck at zip."""
        # Added after runs were in flight: those replay without this upsert (tests/histories/v1).
        if workflow.patched(WAITING_STEP_PATCH):
            workflow.upsert_search_attributes([SA_STEP.value_set(names.STEP_WAITING)])

    async def _step(
        self,
        inp: ExposureInput,
        step: str,
        arg: Any,
        result_type: type,
        wrap: bool = True,
    ) -> Any:
        self._state.current = step
        workflow.upsert_search_attributes([SA_STEP.value_set(step)])
        try:
            receipt = await workflow.execute_activity(
                names.ACTIVITY[step],
                arg,
                result_type=result_type,
                task_queue=getattr(inp.queues, step),
                start_to_close_timeout=STEP_TIMEOUT[step],
                heartbeat_timeout=timedelta(seconds=inp.policy.heartbeat_s),
                retry_policy=STEP_RETRY,
            )
        except ActivityError as err:
            if wrap:
                raise _named(err, step) from err
            raise
        self._state.steps[step] = StepState(
            done=True, when=workflow.now().isoformat(), receipt=asdict(receipt)
        )
        return receipt


@contextmanager
def _span(name: str, exp: Exposure, step: str | None = None, **extra: str) -> Iterator[trace.Span]:
    """A span of this exposure's trace; replay-safe (ids from the workflow's seeded random)."""
    attributes = {**names.exposure_attributes(exp.instrument, exp.day_obs, exp.obs_id, step), **extra}
    with trace.get_tracer(__name__).start_as_current_span(name, attributes=attributes) as span:
        yield span


async def _traced(exp: Exposure, step: str, work: Awaitable[T]) -> T:
    """Await one step inside its span (the activity's spans nest under it)."""
    with _span(f"step:{step}", exp, step) as span:
        receipt = await work
        span.set_attribute("already_done", bool(getattr(receipt, "already_done", False)))
        return receipt


def _checked(inp: ExposureInput) -> None:
    """Fail the run at once, before any step, if a name in its input is unsafe (a start that
    bypassed ``unembargo start`` can pass anything)."""
    try:
        check_input(inp)
    except names.InvalidName as err:
        raise ApplicationError(
            f"{err}; nothing was done. Start the exposure with valid names (`unembargo start`).",
            type=names.InvalidName.__name__,
            non_retryable=True,
        ) from None


def _named(err: ActivityError, step: str) -> ApplicationError:
    """Fail the workflow under the activity's error name, so the UI shows the cause."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return ApplicationError(f"step {step}: {cause.message}", type=cause.type, non_retryable=True)
    return ApplicationError(f"step {step}: {err}", type="StepFailed", non_retryable=True)
