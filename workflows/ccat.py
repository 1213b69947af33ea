"""The CCAT flow's workflows: one per package, per transfer package, per deletion, per staging.

Deterministic code only. Every choice that needs the database (which buffer, which
archive site) is an activity's receipt, so a replay takes the same path and a restart
keeps it. A transfer workflow is started by the first of its packages' workflows to
bundle (a child left running on its own); it sends, unpacks, archives and replicates,
and only then starts the deletions of the SOURCE and BUFFER copies. Each deletion
activity checks the deletion rule against the copies in the database at the moment it
deletes, so no path through these workflows can remove the last verified copy.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from unembargo.models.ccat import (
        ARCHIVE_TRANSFER,
        BUNDLE,
        CHECKSUM_MISMATCH,
        CLEANUP,
        DELETION,
        DELETION_STEPS,
        DELETION_WORKFLOW,
        DONE,
        FILE_SET,
        FULL_SIGNAL,
        LAST_SCAN_QUERY,
        MONITORING,
        PACKAGE,
        PACKAGE_CREATION,
        PACKAGE_STEPS,
        PACKAGE_WORKFLOW,
        STAGE_STEPS,
        STAGE_WORKFLOW,
        STAGING,
        TRANSFER,
        TRANSFER_PACKAGE_CREATION,
        TRANSFER_STEPS,
        TRANSFER_WORKFLOW,
        UNPACKING,
        WAITING,
        WATCH_STEPS,
        WATCH_WORKFLOW,
        ArchiveInput,
        BundleInput,
        BundleReceipt,
        CloseInput,
        CloseReceipt,
        DeleteReceipt,
        DeleteStepInput,
        DeletionInput,
        DeletionStep,
        PackageInput,
        PackageReceipt,
        PackageStep,
        PackageStepInput,
        Place,
        ReplicateInput,
        RouteArchiveInput,
        RouteArchiveReceipt,
        RouteBufferInput,
        RouteBufferReceipt,
        ScanSourceInput,
        ScanSourceReceipt,
        StageInput,
        StageReceipt,
        StageStep,
        StageStepInput,
        TransferInput,
        TransferResult,
        TransferStep,
        TransferStepInput,
        UnpackInput,
        WatchInput,
        WatchStep,
        deletion_workflow_id,
        package_workflow_id,
        transfer_workflow_id,
    )
    from unembargo.models.flow import StepSpec
    from unembargo.models.names import SA_STEP


def _set_step(step: str) -> None:
    workflow.upsert_search_attributes([SA_STEP.value_set(step)])


async def _act(spec: StepSpec, arg: Any, queue: str, heartbeat_s: float) -> Any:
    return await workflow.execute_activity(
        spec.activity,
        arg,
        result_type=spec.receipt,
        task_queue=queue,
        start_to_close_timeout=spec.timeout,
        heartbeat_timeout=timedelta(seconds=heartbeat_s),
        retry_policy=spec.retry,
    )


def _is_mismatch(err: ActivityError) -> bool:
    return isinstance(err.cause, ApplicationError) and err.cause.type == CHECKSUM_MISMATCH


@workflow.defn(name=PACKAGE_WORKFLOW)
class CcatPackageWorkflow:
    """Tar one observation's files at its site's best buffer, then hand it to a bundle."""

    @workflow.run
    async def run(self, inp: PackageInput) -> PackageReceipt:
        hb, source = inp.policy.heartbeat_s, inp.source.queue(PACKAGE_CREATION)
        _set_step(PackageStep.ROUTE)
        # Fixed here for the rest of the run: a buffer made inactive later still finishes
        # what it was given; new packages go to the next best one.
        route: RouteBufferReceipt = await _act(
            PACKAGE_STEPS[PackageStep.ROUTE], RouteBufferInput(inp.package, inp.source.location), source, hb
        )
        buffer = route.buffer
        _set_step(PackageStep.PACKAGE)
        packed: PackageReceipt = await _act(
            PACKAGE_STEPS[PackageStep.PACKAGE],
            PackageStepInput(inp.package, inp.source.location, buffer.location),
            source,
            hb,
        )
        _set_step(PackageStep.BUNDLE)
        bundled: BundleReceipt = await _act(
            PACKAGE_STEPS[PackageStep.BUNDLE],
            BundleInput(inp.package, buffer.location),
            buffer.queue(TRANSFER_PACKAGE_CREATION),
            hb,
        )
        wid = transfer_workflow_id(bundled.transfer)
        try:
            # Whichever package bundles first starts it; it outlives this run.
            await workflow.start_child_workflow(
                TRANSFER_WORKFLOW,
                TransferInput(bundled.transfer, buffer, inp.policy),
                id=wid,
                task_queue=workflow.info().task_queue,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass
        if bundled.full:
            try:
                await workflow.get_external_workflow_handle(wid).signal(FULL_SIGNAL)
            except FailureError:
                pass  # closed already: it took the bundle as it was (this package included)
        _set_step(DONE)
        return packed


@workflow.defn(name=TRANSFER_WORKFLOW)
class CcatTransferWorkflow:
    """One transfer package: close the bundle, send it round-robin, unpack, archive, replicate,
    then free the SOURCE and BUFFER copies."""

    def __init__(self) -> None:
        self._full = False

    @workflow.signal(name=FULL_SIGNAL)
    def full(self) -> None:
        self._full = True

    @workflow.run
    async def run(self, inp: TransferInput) -> TransferResult:
        policy, hb = inp.policy, inp.policy.heartbeat_s
        here = inp.buffer.queue(TRANSFER_PACKAGE_CREATION)
        _set_step(WAITING)
        try:
            await workflow.wait_condition(lambda: self._full, timeout=timedelta(seconds=policy.bundle_wait_s))
        except TimeoutError:
            pass
        _set_step(TransferStep.CLOSE)
        closed: CloseReceipt = await _act(
            TRANSFER_STEPS[TransferStep.CLOSE], CloseInput(inp.transfer, inp.buffer.location), here, hb
        )
        _set_step(TransferStep.ROUTE)
        route: RouteArchiveReceipt = await _act(
            TRANSFER_STEPS[TransferStep.ROUTE], RouteArchiveInput(inp.transfer), here, hb
        )
        dest = route.destination
        await self._send_and_unpack(inp, closed, dest.buffer)
        _set_step(TransferStep.ARCHIVE)
        await _act(
            TRANSFER_STEPS[TransferStep.ARCHIVE],
            ArchiveInput(inp.transfer, dest.buffer.location, dest.archive.location, closed.packages),
            dest.archive.queue(ARCHIVE_TRANSFER),
            hb,
        )
        _set_step(TransferStep.REPLICATE)
        # From the archive that has it to every other archive site, in parallel.
        await asyncio.gather(
            *(
                _act(
                    TRANSFER_STEPS[TransferStep.REPLICATE],
                    ReplicateInput(dest.archive.location, other.archive.location, closed.packages),
                    other.archive.queue(ARCHIVE_TRANSFER),
                    hb,
                )
                for other in route.others
            )
        )
        _set_step(CLEANUP)
        copies: list[tuple[str, str, Place]] = [
            (BUNDLE, inp.transfer, inp.buffer),
            (BUNDLE, inp.transfer, dest.buffer),
        ]
        for p in closed.packages:
            copies += [
                (FILE_SET, p.name, closed.sources[p.source]),
                (PACKAGE, p.name, inp.buffer),
                (PACKAGE, p.name, dest.buffer),
            ]
        refused = await self._delete(copies, hb)
        _set_step(DONE)
        return TransferResult(
            inp.transfer,
            dest.site,
            [o.site for o in route.others],
            len(closed.packages),
            deletions=len(copies) - len(refused),
            refused=refused,
        )

    async def _send_and_unpack(self, inp: TransferInput, closed: CloseReceipt, dest: Place) -> None:
        """Transfer, then unpack at the destination; a failed unpack is retried alone, a
        package that fails its checksum after unpacking sends the bundle again."""
        policy, hb = inp.policy, inp.policy.heartbeat_s
        fresh = False
        for attempt in range(policy.max_retransfers + 1):
            _set_step(TransferStep.TRANSFER)
            await _act(
                TRANSFER_STEPS[TransferStep.TRANSFER],
                TransferStepInput(
                    inp.transfer, inp.buffer.location, dest.location, closed.size, closed.checksum, fresh
                ),
                inp.buffer.queue(TRANSFER),
                hb,
            )
            _set_step(TransferStep.UNPACK)
            try:
                await _act(
                    TRANSFER_STEPS[TransferStep.UNPACK],
                    UnpackInput(inp.transfer, dest.location, closed.packages),
                    dest.queue(UNPACKING),
                    hb,
                )
                return
            except ActivityError as err:
                if not _is_mismatch(err) or attempt == policy.max_retransfers:
                    raise
                workflow.logger.warning("transfer %s: %s; sending it again", inp.transfer, err.cause)
                fresh = True

    async def _delete(self, copies: list[tuple[str, str, Place]], hb: float) -> list[str]:
        """Run a deletion workflow per copy; the ids of those that refused (or failed)."""
        handles = []
        for kind, unit, place in copies:
            wid = deletion_workflow_id(kind, unit, place.location)
            try:
                handles.append(
                    await workflow.start_child_workflow(
                        DELETION_WORKFLOW,
                        DeletionInput(kind, unit, place.location, place.queue(DELETION), hb),
                        id=wid,
                        task_queue=workflow.info().task_queue,
                        # One that refused earlier (rule not met then) may run again now.
                        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    )
                )
            except WorkflowAlreadyStartedError:
                pass  # running or done already
        results = await asyncio.gather(*handles, return_exceptions=True)
        return [h.id for h, r in zip(handles, results, strict=True) if isinstance(r, BaseException)]


@workflow.defn(name=DELETION_WORKFLOW)
class CcatDeletionWorkflow:
    """Remove one copy; the activity refuses (DeletionRefused) unless the rule holds then."""

    @workflow.run
    async def run(self, inp: DeletionInput) -> DeleteReceipt:
        _set_step(DeletionStep.DELETE)
        done: DeleteReceipt = await _act(
            DELETION_STEPS[DeletionStep.DELETE],
            DeleteStepInput(inp.kind, inp.unit, inp.location),
            inp.queue,
            inp.heartbeat_s,
        )
        _set_step(DONE)
        return done


@workflow.defn(name=STAGE_WORKFLOW)
class CcatStageWorkflow:
    """Copy a package from its best verified archive copy to a PROCESSING location."""

    @workflow.run
    async def run(self, inp: StageInput) -> StageReceipt:
        _set_step(StageStep.STAGE)
        done: StageReceipt = await _act(
            STAGE_STEPS[StageStep.STAGE],
            StageStepInput(inp.package, inp.location.location),
            inp.location.queue(STAGING),
            inp.heartbeat_s,
        )
        _set_step(DONE)
        return done


@workflow.defn(name=WATCH_WORKFLOW)
class CcatWatchWorkflow:
    """The directory watch of a SOURCE: scan its folder (on its monitoring queue), start the
    package workflow of each observation the scan filed, wait ``poll_s``, again.

    Its memory is the database (an observation filed is not filed again) and the sizes the
    last scan saw, carried into the next scan and across continue-as-new; so a watch whose
    workers were down simply scans again and catches up."""

    def __init__(self) -> None:
        self._last: ScanSourceReceipt | None = None

    @workflow.query(name=LAST_SCAN_QUERY)
    def last_scan(self) -> ScanSourceReceipt | None:
        return self._last

    @workflow.run
    async def run(self, inp: WatchInput) -> None:
        queue, sizes = inp.source.queue(MONITORING), inp.sizes
        _set_step(WatchStep.SCAN)
        # Package workflows this run started (or found started): one start each per run.
        started: set[str] = set()
        for _ in range(inp.scans_per_run):
            self._last = got = await _act(
                WATCH_STEPS[WatchStep.SCAN],
                ScanSourceInput(inp.source.location, inp.min_age_s, sizes),
                queue,
                inp.policy.heartbeat_s,
            )
            sizes = got.sizes
            for obs in got.ready:
                if obs not in started:
                    await self._package(obs, inp)
                    started.add(obs)
            if workflow.info().is_continue_as_new_suggested():
                break
            await workflow.sleep(timedelta(seconds=inp.poll_s))
        workflow.continue_as_new(replace(inp, sizes=sizes))

    async def _package(self, obs: str, inp: WatchInput) -> None:
        """Start the observation's package workflow, as `ccat file` does; it outlives this run."""
        try:
            await workflow.start_child_workflow(
                PACKAGE_WORKFLOW,
                PackageInput(obs, inp.source, inp.policy),
                id=package_workflow_id(obs),
                task_queue=workflow.info().task_queue,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            )
        except WorkflowAlreadyStartedError:
            pass  # running or done already (`ccat file`, or an earlier run of this watch)


# What a worker registers for the flow.
CCAT_WORKFLOWS: list[type] = [
    CcatPackageWorkflow,
    CcatTransferWorkflow,
    CcatDeletionWorkflow,
    CcatStageWorkflow,
    CcatWatchWorkflow,
]
