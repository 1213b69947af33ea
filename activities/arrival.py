"""The arrivals flow's activities: the embargo bucket and butler, and the Temporal service.

Each is check-first: listing and reading change nothing, an ingested raw is recognised
("already", success), a defined visit is kept, and the unembargo workflow is started
through engine/starter, which never starts an id twice.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client

from unembargo.activities.context import Resources, checkpoint, heartbeating
from unembargo.adapters import arrival_ingest
from unembargo.engine.arrivals import sweep
from unembargo.engine.starter import settings_policy, start_exposures
from unembargo.engine.telemetry import new_traces
from unembargo.models import names
from unembargo.models.arrival import (
    STEPS,
    SWEEP_ACTIVITY,
    EmbargoInput,
    EmbargoReceipt,
    ExpectedReceipt,
    FolderInput,
    FolderReceipt,
    IngestBatchInput,
    IngestBatchReceipt,
    StartInput,
    StartReceipt,
    Step,
    SweepInput,
    SweepResult,
    VisitInput,
    VisitReceipt,
)
from unembargo.models.tables import step_queues


class ArrivalActivities:
    """One instance per worker; the Temporal client starts unembargo workflows."""

    def __init__(self, resources: Resources, client: Client) -> None:
        self.resources = resources
        self.client = client

    def _prefix(self, inp: FolderInput | IngestBatchInput) -> str:
        s = self.resources.settings
        return names.exposure_prefix(s.s3_prefix, inp.instrument, inp.day_obs, inp.obs_id)

    @activity.defn(name=STEPS[Step.LIST].activity)
    def list_arrival_folder(self, inp: FolderInput) -> FolderReceipt:
        """Every object of the exposure folder (notifications may have been lost)."""
        s = self.resources.settings
        return FolderReceipt(arrival_ingest.list_names(self.resources.s3, s.s3_bucket, self._prefix(inp)))

    @activity.defn(name=STEPS[Step.EXPECTED].activity)
    def read_expected_sensors(self, inp: FolderInput) -> ExpectedReceipt:
        s = self.resources.settings
        key = f"{self._prefix(inp)}{names.expected_sensors_name(inp.obs_id)}"
        return arrival_ingest.read_expected(self.resources.s3, s.s3_bucket, key)

    @activity.defn(name=STEPS[Step.INGEST].activity)
    def ingest_raws(self, inp: IngestBatchInput) -> IngestBatchReceipt:
        """Ingest a batch of raws in place; per-file outcomes, never all-or-nothing."""
        s = self.resources.settings
        with heartbeating():
            return arrival_ingest.ingest_batch(
                self.resources.embargo_butler_writeable(),
                self.resources.s3,
                s.s3_bucket,
                s.s3_prefix,
                inp,
                checkpoint=lambda point: checkpoint("ingest_raws", point),
            )

    @activity.defn(name=STEPS[Step.VISITS].activity)
    def define_visit(self, inp: VisitInput) -> VisitReceipt:
        with heartbeating():
            return arrival_ingest.define_visit(
                self.resources.embargo_butler_writeable(), inp.instrument, inp.exposure_id
            )

    @activity.defn(name=STEPS[Step.EMBARGO].activity)
    def embargo_end(self, inp: EmbargoInput) -> EmbargoReceipt:
        """When the exposure's embargo ends, under the rules in force (Settings.rules())."""
        return arrival_ingest.embargo_end(
            self.resources.embargo_butler(), inp.instrument, inp.exposure_id, self.resources.settings.rules()
        )

    @activity.defn(name=SWEEP_ACTIVITY)
    async def sweep_arrivals(self, inp: SweepInput) -> SweepResult:
        """The sweep schedule's run: every object of the recent days that no arrival has seen."""
        s = self.resources.settings
        now = datetime.now(UTC)
        listing: dict[tuple[str, int, str], list[str]] = {}
        for offset in inp.days:
            # LSSTCam's observing day rolls over at 12:00 UTC.
            day_obs = int((now - timedelta(days=offset, hours=12)).strftime("%Y%m%d"))
            listing.update(
                await asyncio.to_thread(
                    arrival_ingest.day_listing,
                    self.resources.s3,
                    s.s3_bucket,
                    s.s3_prefix,
                    inp.instrument,
                    day_obs,
                )
            )
        return await sweep(self.client, s, listing, queue=inp.queue)

    @activity.defn(name=STEPS[Step.START].activity)
    async def start_unembargo(self, inp: StartInput) -> StartReceipt:
        """Start the exposure's unembargo workflow, as `unembargo start` does (same id, never twice)."""
        settings = self.resources.settings

        def queues() -> dict[str, str]:
            with Session(self.resources.engine) as session:
                return step_queues(session)

        found = await asyncio.to_thread(queues)
        with new_traces():
            (outcome,) = await start_exposures(
                self.client, settings.workflow_task_queue, [inp.exposure], found, settings_policy(settings)
            )
        return StartReceipt(outcome.workflow_id, outcome.outcome)
