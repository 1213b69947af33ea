"""A worker process: the workflows plus the activities of some locations.

Each location has its own task queue; a worker serves the queues of the locations
whose storage or service it can reach (several workers, on several machines, may
serve one location). Which activities a location runs follows from its kind; the
schedule's selection runs where zip runs (names.SELECT_LOCATION_KIND).
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

from unembargo.activities.butler import ButlerActivities
from unembargo.activities.context import Resources
from unembargo.activities.rucio import RucioActivities
from unembargo.activities.temporal import StartingActivities
from unembargo.activities.zip import ZipActivities
from unembargo.models.names import SELECT_LOCATION_KIND, STEP_LOCATION_KIND, location_queue
from unembargo.models.settings import Settings
from unembargo.models.tables import get_location
from unembargo.workers.memory import map_large_buffers
from unembargo.workers.observe import ActivityObserver
from unembargo.workflows.exposure import ExposureWorkflow
from unembargo.workflows.select import SelectAndStartWorkflow

log = logging.getLogger(__name__)

# Steps each location kind runs, derived from the one table in names.py.
KIND_STEPS = {
    kind: [step for step, k in STEP_LOCATION_KIND.items() if k == kind]
    for kind in set(STEP_LOCATION_KIND.values())
}


def step_activities(resources: Resources) -> dict[str, Callable[..., Any]]:
    """Step name -> activity callable, all sharing one Resources."""
    zipper = ZipActivities(resources)
    butler = ButlerActivities(resources)
    rucio = RucioActivities(resources)
    return {
        "zip": zipper.zip_exposure,
        "export": butler.export_dimensions,
        "ingest": butler.ingest_zip,
        "register": rucio.register_in_rucio,
        "tag": rucio.tag_obs_dataset,
    }


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
    # Sync activities (butler, boto3, rucio are blocking libraries) run in threads.
    executor = ThreadPoolExecutor(max_workers=max_concurrent_activities * max(1, len(locations)))
    workers = []
    with Session(resources.engine) as session:
        kinds = {name: get_location(session, name).kind for name in locations}
    for name, kind in kinds.items():
        served = [activities[step] for step in KIND_STEPS.get(kind, [])]
        if kind == SELECT_LOCATION_KIND:
            served.append(selection)
        workers.append(
            Worker(
                client,
                task_queue=location_queue(name),
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
                workflows=[ExposureWorkflow, SelectAndStartWorkflow],
                # A killed worker's workflows move to a live one after 2 s, not 10 s.
                sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
            )
        )
    return workers


async def run(
    client: Client, settings: Settings, locations: Sequence[str], serve_workflows: bool = True
) -> None:
    """Serve until cancelled (Ctrl-C / SIGTERM)."""
    if not map_large_buffers():
        log.info("malloc's mmap threshold is not settable here; large objects may stay resident")
    workers = build_workers(client, settings, locations, serve_workflows)
    log.info("serving %s", ", ".join(w.task_queue for w in workers))
    await asyncio.gather(*(w.run() for w in workers))
