"""``unembargo locations``: the sites and locations in the database, their queues and who polls them.

Health comes from Temporal itself (DescribeTaskQueue), not from a side channel: a queue is
served when some worker polled it recently, and each poller says when it last did.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from unembargo.models.locations import (
    DataLocation,
    LocationType,
    StorageType,
    all_queues,
    check_operations,
    operation_queues,
    upsert_location,
)
from unembargo.models.names import InvalidName
from unembargo.models.settings import Settings
from unembargo.models.tables import connect

# DescribeTaskQueue's two kinds of queue: workflow tasks and activity tasks share a name.
_TYPES = {
    "workflow": TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    "activity": TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
}


@dataclass(frozen=True)
class LocationRow:
    """One location as ``locations list`` shows it."""

    name: str
    site: str
    type: str
    storage: str
    where: str
    priority: int
    active: bool
    operations: list[str]
    queues: list[str]


@dataclass(frozen=True)
class QueueRow:
    """One task queue of the database: which location and operation it is for."""

    queue: str
    location: str | None
    site: str | None
    # None for a location's legacy queue (every operation it serves) and the workflow queue.
    operation: str | None


@dataclass(frozen=True)
class Poller:
    """A worker polling a queue, as Temporal last saw it."""

    identity: str
    task_type: str
    last_access: datetime | None


@dataclass(frozen=True)
class QueueHealth:
    queue: QueueRow
    pollers: list[Poller]


@dataclass(frozen=True)
class NewLocation:
    """What ``locations add`` was given."""

    name: str
    site: str
    type: str
    storage: str
    path: str | None = None
    endpoint: str | None = None
    bucket: str | None = None
    prefix: str = ""
    priority: int = 0
    active: bool = True
    operations: tuple[str, ...] = ()
    short_name: str | None = None


def _engine(settings: Settings) -> Engine:
    return connect(settings.database_url.get_secret_value())


def list_locations(settings: Settings) -> list[LocationRow]:
    """Every location, by site and name."""
    with Session(_engine(settings)) as session:
        rows = session.exec(select(DataLocation).order_by(DataLocation.site, DataLocation.name)).all()
        return [
            LocationRow(
                name=loc.name,
                site=loc.site,
                type=str(loc.type),
                storage=str(loc.storage),
                where=loc.uri(),
                priority=loc.priority,
                active=loc.active,
                operations=sorted(loc.served()),
                queues=list(operation_queues(session, loc).values()),
            )  # fmt: skip
            for loc in rows
        ]


def queues(settings: Settings) -> list[QueueRow]:
    """Every task queue of the database's locations, then the workflow queue."""
    with Session(_engine(settings)) as session:
        found = [
            QueueRow(queue=queue, location=loc.name, site=loc.site, operation=op.value if op else None)
            for loc, op, queue in all_queues(session)
        ]
    return [*found, QueueRow(queue=settings.workflow_task_queue, location=None, site=None, operation=None)]


def _check(new: NewLocation) -> DataLocation:
    """The row for ``new``, or InvalidName saying which option is missing or wrong."""
    try:
        type, storage = LocationType(new.type), StorageType(new.storage)
    except ValueError as err:
        raise InvalidName(str(err)) from err
    needs = {
        StorageType.DISK: ("path", new.path),
        StorageType.TAPE: ("path", new.path),
        StorageType.S3: ("bucket", new.bucket),
        StorageType.SERVICE: ("endpoint", new.endpoint),
    }[storage]
    if not needs[1]:
        raise InvalidName(f"a {storage.value} location needs --{needs[0]}")
    return DataLocation(
        name=new.name, site=new.site, type=type, storage=storage, path=new.path, endpoint=new.endpoint,
        bucket=new.bucket, prefix=new.prefix, priority=new.priority, active=new.active,
        operations=check_operations(type, new.operations),
    )  # fmt: skip


def add_location(settings: Settings, new: NewLocation) -> list[str]:
    """Create or replace a location (its site too, if new); the queues it now has."""
    row = _check(new)
    with Session(_engine(settings)) as session:
        saved = upsert_location(session, row, new.short_name)
        return list(operation_queues(session, saved).values())


async def health(client: Client, settings: Settings) -> list[QueueHealth]:
    """Every queue's pollers (workflow and activity tasks), as Temporal reports them."""
    rows = queues(settings)
    described = await asyncio.gather(*(_pollers(client, settings.temporal_namespace, r.queue) for r in rows))
    return [QueueHealth(row, pollers) for row, pollers in zip(rows, described, strict=True)]


async def _pollers(client: Client, namespace: str, queue: str) -> list[Poller]:
    found = []
    for task_type, enum in _TYPES.items():
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=namespace, task_queue=TaskQueue(name=queue), task_queue_type=enum
            )
        )
        for p in resp.pollers:
            seen = p.last_access_time.ToDatetime(tzinfo=UTC) if p.HasField("last_access_time") else None
            found.append(Poller(identity=p.identity, task_type=task_type, last_access=seen))
    return found


def as_json(value: object) -> object:
    """A row (or list of rows) as plain JSON values."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: as_json(v) for k, v in asdict(value).items()}  # type: ignore[call-overload]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value
