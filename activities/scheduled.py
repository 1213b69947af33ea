"""The Temporal service as an external system: the scheduled selection starts exposure workflows.

It runs the selection of ``unembargo start`` (adapters/selection.py, on the embargo
butler) and starts through ``engine.starter``, so ids, search attributes and the
refusal to start an existing id are the same whichever way an exposure is started.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client

from unembargo.activities.context import Resources
from unembargo.adapters.selection import select_exposures
from unembargo.engine.starter import settings_policy, start_exposures
from unembargo.engine.telemetry import new_traces
from unembargo.models import names
from unembargo.models.exposure import Exposure
from unembargo.models.schedule import SelectInput, SelectResult
from unembargo.models.tables import step_queues


class StartingActivities:
    """The schedule's activity; holds the worker's Temporal client."""

    def __init__(self, resources: Resources, client: Client) -> None:
        self.resources = resources
        self.client = client

    @activity.defn(name=names.SELECT_ACTIVITY)
    async def select_and_start(self, inp: SelectInput) -> SelectResult:
        """Start a workflow for every due exposure that has none."""
        settings = self.resources.settings
        exposures = await asyncio.to_thread(self._select, inp)
        with Session(self.resources.engine) as session:
            queues = step_queues(session)
        # Each exposure gets a trace of its own, not a branch of this run's.
        with new_traces():
            outcomes = await start_exposures(
                self.client, settings.workflow_task_queue, exposures, queues, settings_policy(settings)
            )
        counts = Counter(o.outcome for o in outcomes)
        started = counts.pop("started", 0)
        activity.logger.info("%d due, %d started, others: %s", len(exposures), started, dict(counts))
        return SelectResult(selected=len(exposures), started=started, existing=dict(counts))

    def _select(self, inp: SelectInput) -> list[Exposure]:
        window = None if inp.window_s is None else timedelta(seconds=inp.window_s)
        return select_exposures(
            self.resources.embargo_butler(),
            instrument=inp.instrument,
            rules=self.resources.settings.rules(),
            now=datetime.now(UTC),
            lookback=timedelta(seconds=inp.lookback_s),
            window=window,
        )
