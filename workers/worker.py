"""A worker process: the workflows plus the activities of some locations.

Each operation at a location has its own task queue (models/locations.py); a worker
serves the queues of the locations whose storage or service it can reach (several
workers, on several machines, may serve one location). Which activities a queue runs
follows from its operation and the flows' step tables (models/exposure.STEPS: a step's
``location`` is the operation it needs); the schedule's selection runs where its step
runs (models/schedule.SELECT_STEP).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlmodel import Session
from temporalio.client import Client
from temporalio.worker import Worker

from unembargo.activities.arrival import ArrivalActivities
from unembargo.activities.butler import ButlerActivities
from unembargo.activities.carousel import CarouselActivities, carousel_activities
from unembargo.activities.ccat import CcatActivities, ccat_activities
from unembargo.activities.context import Resources
from unembargo.activities.fits import FitsActivities, fits_activities
from unembargo.activities.rawintegrity import RawIntegrityActivities, rawintegrity_activities
from unembargo.activities.rucio import RucioActivities
from unembargo.activities.scheduled import StartingActivities
from unembargo.activities.zip import ZipActivities
from unembargo.models import arrival
from unembargo.models.exposure import STEPS, Step
from unembargo.models.locations import get_location, operation_queues
from unembargo.models.schedule import SELECT_STEP
from unembargo.models.settings import Settings
from unembargo.workers.memory import map_large_buffers
from unembargo.workers.observe import ActivityObserver
from unembargo.workflows.arrival import ArrivalWorkflow
from unembargo.workflows.arrival_sweep import ArrivalSweepWorkflow
from unembargo.workflows.carousel import CarouselWorkflow
from unembargo.workflows.carousel_throttle import CarouselThrottleWorkflow
from unembargo.workflows.ccat import CCAT_WORKFLOWS
from unembargo.workflows.exposure import ExposureWorkflow
from unembargo.workflows.fits import FITS_WORKFLOWS
from unembargo.workflows.rawintegrity import RawFileWorkflow, RegisterBatchWorkflow
from unembargo.workflows.select import SelectAndStartWorkflow

log = logging.getLogger(__name__)


def step_activities(resources: Resources) -> dict[Step, Callable[..., Any]]:
    """Step -> its activity: the method named as the step's spec names its activity."""
    implementations = (ZipActivities(resources), ButlerActivities(resources), RucioActivities(resources))
    found = {}
    for step, spec in STEPS.items():
        owners = [impl for impl in implementations if hasattr(impl, spec.activity)]
        if len(owners) != 1:
            raise LookupError(f"step {step}: {len(owners)} implementations of activity {spec.activity!r}")
        found[step] = getattr(owners[0], spec.activity)
    return found


def arrival_activities(resources: Resources, client: Client) -> list[Callable[..., Any]]:
    """The arrivals flow's activities, one per step of its table (models/arrival.STEPS)."""
    impl = ArrivalActivities(resources, client)
    return [*(getattr(impl, spec.activity) for spec in arrival.STEPS.values()), impl.sweep_arrivals]


def build_workers(
    client: Client,
    settings: Settings,
    locations: Sequence[str],
    serve_workflows: bool = True,
    max_concurrent_activities: int = 4,
) -> list[Worker]:
    """One Worker per task queue: the workflow queue and each location's queue."""
    resources = Resources(settings)
    activities = step_activities(resources)
    selection = StartingActivities(resources, client).select_and_start
    arrivals = arrival_activities(resources, client)
    by_operation: dict[str, list[Callable[..., Any]]] = {}
    for step, fn in activities.items():
        by_operation.setdefault(STEPS[step].location, []).append(fn)
    by_operation[STEPS[SELECT_STEP].location].append(selection)
    by_operation.setdefault(arrival.ARRIVAL_LOCATION, []).extend(arrivals)
    for operation, fns in ccat_activities(CcatActivities(resources)).items():
        by_operation.setdefault(operation, []).extend(fns)
    for operation, fns in fits_activities(FitsActivities(resources, client)).items():
        by_operation.setdefault(operation, []).extend(fns)
    for operation, fns in rawintegrity_activities(RawIntegrityActivities(resources, client)).items():
        by_operation.setdefault(operation, []).extend(fns)
    for operation, fns in carousel_activities(CarouselActivities(resources)).items():
        by_operation.setdefault(operation, []).extend(fns)
    queues = location_activities(resources, locations, by_operation)
    # Sync activities (butler, boto3, rucio are blocking libraries) run in threads.
    executor = ThreadPoolExecutor(max_workers=max_concurrent_activities * max(1, len(queues)))
    workers = []
    for queue, served in queues.items():
        workers.append(
            Worker(
                client,
                task_queue=queue,
                activities=served,
                activity_executor=executor,
                max_concurrent_activities=max_concurrent_activities,
                interceptors=[ActivityObserver()],
            )
        )
    if serve_workflows:
        workers.append(
            Worker(
                client,
                task_queue=settings.workflow_task_queue,
                workflows=[ExposureWorkflow, SelectAndStartWorkflow, ArrivalWorkflow, ArrivalSweepWorkflow]
                + CCAT_WORKFLOWS
                + FITS_WORKFLOWS
                + [RawFileWorkflow, RegisterBatchWorkflow, CarouselWorkflow, CarouselThrottleWorkflow],
                # A killed worker's workflows move to a live one after 2 s, not 10 s.
                sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
            )
        )
    return workers


def location_activities(
    resources: Resources, locations: Sequence[str], by_operation: dict[str, list[Callable[..., Any]]]
) -> dict[str, list[Callable[..., Any]]]:
    """Queue -> the activities its worker runs, for every queue of ``locations`` that has any.

    A location's legacy queue (from before per-operation queues) runs all of its operations'
    activities, for the workflows started then.
    """
    found: dict[str, list[Callable[..., Any]]] = {}
    with Session(resources.engine) as session:
        for name in locations:
            loc = get_location(session, name)
            for op, queue in operation_queues(session, loc).items():
                ops = sorted(loc.served()) if op is None else [op]
                served = [fn for o in ops for fn in by_operation.get(o, [])]
                if served:
                    found[queue] = served
                else:
                    log.info("queue %s: no activity of this build does %s", queue, op)
    return found


async def run(
    client: Client, settings: Settings, locations: Sequence[str], serve_workflows: bool = True
) -> None:
    """Serve until cancelled (Ctrl-C / SIGTERM)."""
    if not map_large_buffers():
        log.info("malloc's mmap threshold is not settable here; large objects may stay resident")
    workers = build_workers(client, settings, locations, serve_workflows)
    log.info("serving %s", ", ".join(w.task_queue for w in workers))
    await asyncio.gather(*(w.run() for w in workers))
