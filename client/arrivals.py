"""The arrivals flow's use-cases: sweep a day for lost notifications, show an arrival.

>>> asyncio.run(sweep_day(client, settings, "LSSTCam", 20251231))  # doctest: +SKIP
SweepResult(exposures=5, signalled=0, by_state={'up to date': 5})
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client

from unembargo.adapters.arrival_ingest import day_listing
from unembargo.adapters.s3 import connect as s3_connect
from unembargo.engine.arrivals import sweep
from unembargo.models import arrival
from unembargo.models.arrival import ArrivalState, SweepInput, SweepResult
from unembargo.models.settings import Settings


async def sweep_day(client: Client, settings: Settings, instrument: str, day_obs: int) -> SweepResult:
    """Signal every object of the day's folders that no arrival has seen."""
    import asyncio

    s3 = s3_connect(settings.s3_endpoint_url)
    listing = await asyncio.to_thread(
        day_listing, s3, settings.s3_bucket, settings.s3_prefix, instrument, day_obs
    )
    return await sweep(client, settings, listing)


async def arrival_state(client: Client, instrument: str, obs_id: str) -> ArrivalState:
    handle = client.get_workflow_handle(arrival.arrival_workflow_id(instrument, obs_id))
    return await handle.query("state", result_type=ArrivalState)


async def create_sweep_schedule(
    client: Client, settings: Settings, instrument: str, every: timedelta, queue: str | None = None
) -> str:
    """A Temporal Schedule that sweeps today and yesterday every ``every``; 'created' or 'updated'."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleUpdate,
        ScheduleUpdateInput,
    )

    from unembargo.engine.arrivals import arrival_queue

    inp = SweepInput(queue=queue or arrival_queue(settings), instrument=instrument)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            arrival.SWEEP_WORKFLOW,
            inp,
            id=arrival.sweep_schedule_id(instrument),
            task_queue=settings.workflow_task_queue,
            execution_timeout=timedelta(hours=1),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # A sweep still running when the next comes due: skip it; the next one sees the same.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
    )
    try:
        await client.create_schedule(arrival.sweep_schedule_id(instrument), schedule)
        return "created"
    except ScheduleAlreadyRunningError:

        def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(arrival.sweep_schedule_id(instrument)).update(replace)
        return "updated"
