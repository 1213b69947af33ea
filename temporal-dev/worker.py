"""The local stack's worker: serves the workflow queue and every local location."""

from __future__ import annotations

import asyncio
import sys

from sqlmodel import Session

from unembargo.devstack import procs, tape
from unembargo.devstack.s3 import LOCAL_ENV
from unembargo.models.locations import DataLocation, LocationType, Operation, StorageType, location_queues
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, upsert_location

NAME = "worker"


def local_locations(settings: Settings) -> list[DataLocation]:
    """The locations of the local stack: its archive disk (the unembargo destination), Rucio, and
    the rawintegrity flow's online disk and tape (whose migration is the ``tape`` service)."""
    return [
        DataLocation(
            name="local-dest", site="local", type=LocationType.LONG_TERM_ARCHIVE, storage=StorageType.DISK,
            path=str(settings.dest_root), operations=Operation.UNEMBARGO.value,
        ),
        DataLocation(
            name="local-rucio", site="local", type=LocationType.CATALOGUE, storage=StorageType.SERVICE,
            endpoint=settings.rucio_host,
        ),
        *tape.flow_locations(settings),
    ]  # fmt: skip


def _queues(settings: Settings) -> list[str]:
    with Session(connect(settings.database_url.get_secret_value())) as session:
        return [q for loc in local_locations(settings) for q in location_queues(session, loc.name)]


def ensure_locations(settings: Settings) -> None:
    """Put the local locations in the database (idempotent); the rawintegrity flow's with their
    folders and tape RSE, since the worker starts before the tape service."""
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for loc in local_locations(settings):
            upsert_location(session, loc)
    tape.ensure_flow(settings)


def address(settings: Settings) -> str:
    return ", ".join(_queues(settings))


async def _polled(settings: Settings) -> bool:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    for queue in _queues(settings):
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            )
        )
        if not resp.pollers:
            return False
    return True


def health(settings: Settings) -> tuple[bool, str]:
    """Up when this stack's worker process is alive and polling every local queue."""
    if procs.recorded(settings.state_dir, NAME) is None:
        return False, "not running"
    try:
        return (True, "polling") if asyncio.run(_polled(settings)) else (False, "not polling yet")
    except Exception as exc:  # noqa: BLE001 - Temporal may be down; say so
        return False, f"cannot ask Temporal ({exc.__class__.__name__})"


def ensure(settings: Settings) -> str:
    """Start the worker unless this stack's worker runs already."""
    ensure_locations(settings)
    if procs.recorded(settings.state_dir, NAME) is not None:
        return "already up"
    argv = [sys.executable, "-m", "unembargo.cli.app", "worker"]
    for loc in local_locations(settings):
        argv += ["--location", loc.name]
    procs.start(settings.state_dir, NAME, argv, env=LOCAL_ENV)
    procs.poll(lambda: health(settings)[0], 60, "the local worker to poll its queues")
    return "started"


def stop(settings: Settings) -> bool:
    return procs.stop(settings.state_dir, NAME)
