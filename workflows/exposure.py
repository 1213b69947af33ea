"""One durable workflow per exposure: zip, export, ingest, register, tag.

Deterministic code only. Each step is an activity that checks its own "done
when" first, so a replayed, retried or restarted workflow resumes at the first
step that is not done and never repeats a side effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import Priority
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from opentelemetry import trace

    from unembargo.models import names
    from unembargo.models.errors import RERUN
    from unembargo.models.exposure import (
        STEP_PRIORITY,
        STEPS,
        ExportReceipt,
        Exposure,
        ExposureInput,
        ExposureState,
        IngestInput,
        RegisterInput,
        Step,
        StepInput,
        StepState,
        ZipReceipt,
        check_input,
    )
    from unembargo.models.names import SA_DAY_OBS, SA_INSTRUMENT, SA_OBS_ID, SA_STEP

# Patch ids (workflow.patched): runs recorded before a change replay without it.
# Marks the `step` search attribute "waiting" while an incomplete exposure waits.
WAITING_STEP_PATCH = "step-waiting"


@workflow.defn(name=names.EXPOSURE_WORKFLOW)
class ExposureWorkflow:
    def __init__(self) -> None:
        self._state = ExposureState(obs_id="", current=None, steps={step: StepState() for step in STEPS})

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
            zipped: ZipReceipt = await self._zip_when_complete(inp)
            exported: ExportReceipt = await self._step(inp, Step.EXPORT, StepInput(exp))
            await self._step(inp, Step.INGEST, IngestInput(exp, zipped.file))
            register = RegisterInput(exp, zipped.file, exported.file, exported.tracts)
            await self._step(inp, Step.REGISTER, register)
            await self._step(inp, Step.TAG, StepInput(exp))
        self._state.current = None
        workflow.upsert_search_attributes([SA_STEP.value_set(names.STEP_DONE)])
        return self._state

    async def _zip_when_complete(self, inp: ExposureInput) -> ZipReceipt:
        """Zip, waiting on a durable timer while raws are still missing."""
        with _span(f"step:{Step.ZIP}", inp.exposure, Step.ZIP) as span:
            receipt: ZipReceipt = await self._zip_waiting(inp)
            span.set_attribute("already_done", receipt.already_done)
            return receipt

    async def _zip_waiting(self, inp: ExposureInput) -> ZipReceipt:
        deadline = workflow.now() + timedelta(seconds=inp.policy.incomplete_wait_s)
        while True:
            try:
                receipt: ZipReceipt = await self._act(inp, Step.ZIP, StepInput(inp.exposure))
                self._state.waiting_for = None
                return receipt
            except ActivityError as err:
                cause = err.cause
                if not isinstance(cause, ApplicationError) or cause.type != "IncompleteExposure":
                    raise _named(err, Step.ZIP) from err
                if workflow.now() >= deadline:
                    raise ApplicationError(
                        f"step {Step.ZIP}: gave up after waiting {inp.policy.incomplete_wait_s:.0f}s: "
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

    async def _step(self, inp: ExposureInput, step: Step, arg: Any) -> Any:
        """Run one step in its span; a failure ends the run under the step's error name."""
        with _span(f"step:{step}", inp.exposure, step) as span:
            try:
                receipt = await self._act(inp, step, arg)
            except ActivityError as err:
                raise _named(err, step) from err
            span.set_attribute("already_done", bool(getattr(receipt, "already_done", False)))
            return receipt

    async def _act(self, inp: ExposureInput, step: Step, arg: Any) -> Any:
        """Run one step's activity on its location's queue, as its spec says; record the receipt."""
        spec = STEPS[step]
        self._state.current = step
        workflow.upsert_search_attributes([SA_STEP.value_set(step)])
        receipt = await workflow.execute_activity(
            spec.activity,
            arg,
            result_type=spec.receipt,
            task_queue=inp.queues[step],
            start_to_close_timeout=spec.timeout,
            heartbeat_timeout=timedelta(seconds=inp.policy.heartbeat_s),
            retry_policy=spec.retry,
            priority=Priority(priority_key=STEP_PRIORITY[step]),
        )
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
