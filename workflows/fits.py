"""The FITS flow's workflows: one per file (``fits-<name>``), and the DHS poller.

A file's run is a pass of its steps: copy (from the DHS disk, when it came from there),
ingest, then for every destination at once its export, and at the archive its ingest,
then the preview and the calibration associations side by side. A destination that is
down holds only its own export (retried with a growing delay); a preview or association
that fails is reported at the end and holds up nothing. The same name arriving again
while its run is going (the DHS file rewritten, a requeue) is the ``again`` signal: the
run makes one more pass when this one ends, never two at once.

The poller scans the DHS folder every ``poll_s`` seconds on a durable timer; its memory is
the database (activities/fits.scan_dhs), so after any outage it simply scans again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from unembargo.models.fits_flow import (
        AGAIN_SIGNAL,
        DONE,
        FAILED,
        FILE_WORKFLOW,
        REQUEUE_ACTIVITY,
        REQUEUE_WORKFLOW,
        SCAN_ACTIVITY,
        STATE_QUERY,
        STEPS,
        WATCH_WORKFLOW,
        Again,
        CalibrationInput,
        CalibrationReceipt,
        CopyInput,
        CopyReceipt,
        ExportInput,
        ExportReceipt,
        FileInput,
        FileState,
        IngestInput,
        IngestReceipt,
        Place,
        PreviewInput,
        PreviewReceipt,
        RequeueInput,
        RequeueReceipt,
        ScanReceipt,
        Step,
        WatchInput,
    )
    from unembargo.models.names import SA_INSTRUMENT, SA_STEP

# Passes of one run before it continues as new (each pass is some 30 events).
_PASSES_PER_RUN = 50


def _merge(a: Again | None, b: Again) -> Again:
    if a is None:
        return b
    return Again(a.copy or b.copy, a.force or b.force, a.force_md5 or b.force_md5)


def _why(err: BaseException) -> str:
    """The innermost message of an activity failure (its exception's type and text)."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'Error'}: {cause.message}"[:500]
    return str(cause)[:500]


@workflow.defn(name=FILE_WORKFLOW)
class FitsFileWorkflow:
    @workflow.init
    def __init__(self, inp: FileInput) -> None:
        self._state = FileState(name=inp.name, step="queued")
        self._again: Again | None = None
        self._first_error: BaseException | None = None

    @workflow.signal(name=AGAIN_SIGNAL)
    def again(self, what: Again) -> None:
        """The file changed or was requeued: one more pass after this one."""
        self._again = _merge(self._again, what)

    @workflow.query(name=STATE_QUERY)
    def state(self) -> FileState:
        return self._state

    @workflow.run
    async def run(self, inp: FileInput) -> FileState:
        # A signal that came with the start is this pass's request, not another pass.
        first = Again(copy=inp.dhs is not None, force=inp.force, force_md5=inp.force_md5)
        what, self._again = _merge(self._again, first), None
        while True:
            self._state.failures = {}
            self._first_error = None
            await self._pass(inp, what)
            if self._again is None:
                break
            what, self._again = self._again, None
            if self._state.passes >= _PASSES_PER_RUN:
                workflow.continue_as_new(
                    FileInput(inp.name, inp.dataflow, inp.destinations, inp.archive,
                              inp.dhs if what.copy else None, what.force, what.force_md5, inp.policy)
                )  # fmt: skip
        failures = self._state.failures
        if failures:
            self._set_step(FAILED)
            listed = "; ".join(f"{step}: {why}" for step, why in sorted(failures.items()))
            raise ApplicationError(
                f"{inp.name}: {len(failures)} step(s) failed: {listed}. Fix the cause, then "
                f"`unembargo fits requeue --file-re '^{inp.name}$'` runs the file again.",
                type="FitsStepFailed",
                non_retryable=True,
            ) from self._first_error
        self._set_step(DONE)
        return self._state

    async def _pass(self, inp: FileInput, what: Again) -> None:
        s = self._state
        s.passes += 1
        if what.copy and inp.dhs is not None:
            copied: CopyReceipt = await self._act(
                Step.COPY, CopyInput(inp.name, inp.dhs.location, inp.dataflow.location), inp.dataflow, inp
            )
            s.md5, s.size = copied.md5, copied.size
        got: IngestReceipt = await self._act(
            Step.INGEST,
            IngestInput(inp.name, inp.dataflow.location, what.force, what.force_md5),
            inp.dataflow,
            inp,
        )
        s.ingest, s.md5, s.size = got.outcome, got.md5, got.size
        s.instrument, s.observation_type = got.instrument, got.observation_type
        if got.instrument:
            workflow.upsert_search_attributes([SA_INSTRUMENT.value_set(got.instrument)])
        if not got.fits_ok:
            # Ingested with its errors (they are on its diskfile); never exported.
            self._set_step(FAILED)
            raise ApplicationError(
                f"{inp.name} is not valid FITS (astropy's errors are on its diskfile at "
                f"{inp.dataflow.location}); replace the file, then requeue it",
                type="InvalidFits",
                non_retryable=True,
            )
        await asyncio.gather(*(self._destination(inp, dest, what) for dest in inp.destinations))

    async def _destination(self, inp: FileInput, dest: Place, what: Again) -> None:
        """Export to one destination; at the archive, what follows the export there."""
        s = self._state
        assert s.md5 is not None and s.size is not None
        arg = ExportInput(inp.name, inp.dataflow.location, dest.location, s.md5, s.size)
        sent: ExportReceipt | None = await self._try(
            f"export:{dest.location}", Step.EXPORT, arg, inp.dataflow, inp
        )
        s.exports[dest.location] = sent.outcome if sent else "failed"
        if sent is None or dest.location != inp.archive:
            return
        ingest = IngestInput(inp.name, dest.location, what.force, what.force_md5)
        got: IngestReceipt | None = await self._try(
            Step.ARCHIVE_INGEST, Step.ARCHIVE_INGEST, ingest, dest, inp
        )
        if got is None:
            return
        s.archive_ingest = got.outcome
        await asyncio.gather(self._preview(inp, dest), self._calibration(inp, dest))

    async def _preview(self, inp: FileInput, dest: Place) -> None:
        made: PreviewReceipt | None = await self._try(
            Step.PREVIEW, Step.PREVIEW, PreviewInput(inp.name, dest.location), dest, inp
        )
        if made is not None:
            self._state.preview = made.key

    async def _calibration(self, inp: FileInput, dest: Place) -> None:
        arg = CalibrationInput(inp.name, dest.location, inp.policy.calibration_window_days)
        found: CalibrationReceipt | None = await self._try(Step.CALIBRATION, Step.CALIBRATION, arg, dest, inp)
        if found is not None:
            self._state.calibration = found.found if found.science else {}

    async def _try(self, label: str, step: Step, arg: Any, place: Place, inp: FileInput) -> Any:
        """Run a step whose failure is recorded and stops only what depends on it."""
        try:
            return await self._act(step, arg, place, inp)
        except ActivityError as err:
            self._state.failures[label] = _why(err)
            self._first_error = self._first_error or err
            return None

    def _act(self, step: Step, arg: Any, place: Place, inp: FileInput) -> Awaitable[Any]:
        spec = STEPS[step]
        self._set_step(step.value)
        return workflow.execute_activity(
            spec.activity,
            arg,
            result_type=spec.receipt,
            task_queue=place.queue,
            start_to_close_timeout=spec.timeout,
            heartbeat_timeout=timedelta(seconds=inp.policy.heartbeat_s),
            retry_policy=spec.retry,
        )

    def _set_step(self, step: str) -> None:
        if self._state.step != step:
            self._state.step = step
            workflow.upsert_search_attributes([SA_STEP.value_set(step)])


@workflow.defn(name=WATCH_WORKFLOW)
class FitsWatchWorkflow:
    """Scan the DHS folder, wait ``poll_s``, again; continue as new now and then."""

    def __init__(self) -> None:
        self._last: ScanReceipt | None = None
        self._scans = 0

    @workflow.query(name=STATE_QUERY)
    def state(self) -> ScanReceipt | None:
        return self._last

    @workflow.run
    async def run(self, inp: WatchInput) -> None:
        while True:
            self._last = await workflow.execute_activity(
                SCAN_ACTIVITY,
                inp.scan,
                result_type=ScanReceipt,
                task_queue=inp.queue,
                # A scan stats the folder and checks a few new files: seconds; a mount that
                # hangs, or a worker that died, is noticed by the heartbeat.
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=inp.heartbeat_s),
                retry_policy=STEPS[Step.COPY].retry,
            )
            if self._last.invalid_names:
                workflow.logger.warning(
                    "not valid FITS after %d scans: %s",
                    inp.scan.invalid_after,
                    ", ".join(self._last.invalid_names),
                )
            self._scans += 1
            if self._scans >= inp.scans_per_run or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(inp)
            await workflow.sleep(timedelta(seconds=inp.poll_s))


@workflow.defn(name=REQUEUE_WORKFLOW)
class FitsRequeueWorkflow:
    """One requeue (the schedule's run): select the files at the dataflow location, start each."""

    @workflow.run
    async def run(self, inp: RequeueInput) -> RequeueReceipt:
        return await workflow.execute_activity(
            REQUEUE_ACTIVITY,
            inp,
            result_type=RequeueReceipt,
            task_queue=inp.queue,
            # A month of files is thousands of starts, 16 at a time: minutes.
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=inp.policy.heartbeat_s),
            retry_policy=STEPS[Step.INGEST].retry,
        )


# What a worker serving workflows registers (workers/worker.py).
FITS_WORKFLOWS = [FitsFileWorkflow, FitsWatchWorkflow, FitsRequeueWorkflow]
