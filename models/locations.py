"""Sites, data locations and the task queues of their operations: the model every flow routes by.

A *site* is a facility (the telescope, an archive centre); a *data location* is one storage at a
site (a disk path, an S3 bucket and prefix, a tape system, or a service such as a Rucio catalogue)
of one type. The type says which operations the location serves (the matrix ``OPERATIONS``), and
each (location, operation) has its own Temporal task queue, ``{site}_{location}_{operation}``, so
a worker started for a location polls exactly that location's queues and Temporal itself reports
who polls them (``unembargo locations health``).

Routing: new work of a type goes to the active location of that type with the LOWEST priority
(then the first name); an inactive location is skipped, which is how work fails over to a
secondary buffer. Work already routed keeps its queue.

    >>> task_queue("tel", "buffer-1", Operation.TRANSFER)
    'tel_buffer-1_transfer'
    >>> sorted(OPERATIONS[LocationType.LONG_TERM_ARCHIVE])
    [<Operation.ARCHIVE_TRANSFER: 'archive_transfer'>, <Operation.MONITORING: 'monitoring'>]
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

from sqlalchemy import String
from sqlmodel import Field, Session, SQLModel, col, select

from unembargo.models.names import InvalidName, check_name


class LocationType(StrEnum):
    """What a location is for in the flow of raw data (its row of the matrix)."""

    SOURCE = "source"
    BUFFER = "buffer"
    LONG_TERM_ARCHIVE = "long_term_archive"
    PROCESSING = "processing"
    # A service that records where files are (Rucio), not a storage of its own.
    CATALOGUE = "catalogue"


class StorageType(StrEnum):
    """How a location's bytes are reached: ``path`` (DISK, TAPE) or ``endpoint/bucket/prefix`` (S3)."""

    DISK = "disk"
    S3 = "s3"
    TAPE = "tape"
    # A service reached at ``endpoint`` (a catalogue such as Rucio).
    SERVICE = "service"


class Operation(StrEnum):
    """Something a worker does at a location; each (location, operation) has its own task queue."""

    PACKAGE_CREATION = "package_creation"
    TRANSFER_PACKAGE_CREATION = "transfer_package_creation"
    TRANSFER = "transfer"
    UNPACKING = "unpacking"
    ARCHIVE_TRANSFER = "archive_transfer"
    STAGING = "staging"
    DELETION = "deletion"
    MONITORING = "monitoring"
    # The unembargo flow (docs/locations.md): zip, export and ingest an exposure into the archive
    # disk and its butler (and the selection and arrivals that start them) ...
    UNEMBARGO = "unembargo"
    # ... and register and tag its files in the archive's Rucio catalogue.
    REGISTRATION = "registration"


_T, _O = LocationType, Operation

# The operation/location matrix: what a location of each type serves unless it lists its own.
OPERATIONS: Mapping[LocationType, frozenset[Operation]] = MappingProxyType(
    {
        _T.SOURCE: frozenset({_O.PACKAGE_CREATION, _O.DELETION, _O.MONITORING}),
        _T.BUFFER: frozenset(
            {_O.TRANSFER_PACKAGE_CREATION, _O.TRANSFER, _O.UNPACKING, _O.DELETION, _O.MONITORING}
        ),
        _T.LONG_TERM_ARCHIVE: frozenset({_O.ARCHIVE_TRANSFER, _O.MONITORING}),
        _T.PROCESSING: frozenset({_O.STAGING, _O.DELETION, _O.MONITORING}),
        _T.CATALOGUE: frozenset({_O.REGISTRATION}),
    }
)

# Operations a type may serve only when a location lists them (``DataLocation.operations``): the
# unembargo flow's destination is an archive, but not every archive is an unembargo destination,
# so another flow's archives never receive its work (and it never receives theirs).
OPTIONAL_OPERATIONS: Mapping[LocationType, frozenset[Operation]] = MappingProxyType(
    {_T.LONG_TERM_ARCHIVE: frozenset({_O.UNEMBARGO})}
)

# Site short names start every queue name and end at its first '_': no '_' in them.
_SHORT = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class NoLocation(LookupError):
    """No active location for some work, or an unknown location or site name."""


class Site(SQLModel, table=True):
    """A facility that hosts locations (the telescope, an archive centre, SLAC)."""

    name: str = Field(primary_key=True)
    # Starts the name of every task queue of the site's locations: lower case, digits, '-'.
    short_name: str = Field(unique=True)
    description: str = ""


class DataLocation(SQLModel, table=True):
    """One storage (or service) at a site, of one type, polled by the workers that reach it."""

    name: str = Field(primary_key=True)
    site: str = Field(foreign_key="site.name", index=True)
    # Stored as their values (not enum names), so the database reads as the documentation does.
    type: LocationType = Field(sa_type=String, index=True)
    storage: StorageType = Field(sa_type=String)
    # DISK and TAPE: the mount point; S3: endpoint URL, bucket, key prefix; SERVICE: endpoint URL.
    path: str | None = None
    endpoint: str | None = None
    bucket: str | None = None
    prefix: str = ""
    # LOWER is preferred among active locations of a type.
    priority: int = 0
    active: bool = True
    # Comma-separated operations it serves, if not all of its type's (OPERATIONS); the only way
    # to serve one of OPTIONAL_OPERATIONS.
    operations: str | None = None
    # A queue of the former one-queue-per-location model (``unembargo-loc-<name>``) that workflows
    # started before the migration still call; its workers keep serving it. Cleared by nothing.
    legacy_queue: str | None = None

    def served(self) -> frozenset[Operation]:
        """The operations this location serves."""
        if not self.operations:
            return OPERATIONS[LocationType(self.type)]
        return frozenset(Operation(op) for op in self.operations.split(","))

    def uri(self) -> str:
        """Where its bytes are, for people: a path, ``s3://bucket/prefix`` or an endpoint."""
        if self.storage == StorageType.S3:
            return f"s3://{self.bucket}/{self.prefix}"
        return self.path or self.endpoint or ""


def check_site_short(value: str) -> str:
    """``value`` if it can start a queue name, else InvalidName."""
    if not _SHORT.match(value):
        raise InvalidName(
            f"site short name {value!r} is not valid: use lower-case letters, digits and '-' "
            "(at most 32, not starting with '-'); it starts every queue name of the site"
        )
    return value


def short_name_for(site: str) -> str:
    """A short name derived from a site's name (lower case, other characters as '-')."""
    short = re.sub(r"[^a-z0-9-]+", "-", site.lower()).strip("-")[:32] or "site"
    return check_site_short(short)


def task_queue(site_short: str, location: str, operation: Operation | str) -> str:
    """Task queue of one operation at one location: ``{site}_{location}_{operation}``."""
    op = Operation(operation)
    return f"{check_site_short(site_short)}_{check_name('location', location)}_{op.value}"


def check_operations(type: LocationType, operations: Iterable[Operation | str]) -> str | None:
    """The ``operations`` column for a location of ``type`` serving ``operations`` (None: all of
    its type's); InvalidName naming what the type cannot serve."""
    ops = [Operation(op) for op in operations]
    allowed = OPERATIONS[type] | OPTIONAL_OPERATIONS.get(type, frozenset())
    wrong = [op.value for op in ops if op not in allowed]
    if wrong:
        raise InvalidName(
            f"a {type.value} location cannot serve {', '.join(wrong)} "
            f"(it serves {', '.join(sorted(allowed))})"
        )
    return ",".join(sorted(set(ops))) if ops else None


def get_location(session: Session, name: str) -> DataLocation:
    """The location named ``name``, or NoLocation listing the known ones."""
    found = session.get(DataLocation, name)
    if found is None:
        known = ", ".join(session.exec(select(DataLocation.name).order_by(DataLocation.name))) or "none"
        raise NoLocation(f"no location {name!r} (known: {known}); add it with `unembargo locations add`")
    return found


def location_queues(session: Session, location_name: str) -> list[str]:
    """Every task queue a worker started with ``--location location_name`` serves."""
    return list(operation_queues(session, get_location(session, location_name)).values())


def operation_queues(session: Session, location: DataLocation) -> dict[Operation | None, str]:
    """Operation -> its queue at ``location``, in a stable order; None -> its legacy queue."""
    site = session.get(Site, location.site)
    if site is None:
        raise NoLocation(f"location {location.name!r} names site {location.site!r}, which is not known")
    queues: dict[Operation | None, str] = {
        op: task_queue(site.short_name, location.name, op) for op in sorted(location.served())
    }
    if location.legacy_queue:
        queues[None] = location.legacy_queue
    return queues


def all_queues(session: Session) -> list[tuple[DataLocation, Operation | None, str]]:
    """Every (location, operation, queue) of the database, by site and location name."""
    rows = session.exec(select(DataLocation).order_by(DataLocation.site, DataLocation.name)).all()
    return [(loc, op, queue) for loc in rows for op, queue in operation_queues(session, loc).items()]


def best_location(
    session: Session,
    type: LocationType,
    *,
    site: str | None = None,
    exclude: Collection[str] = (),
    operation: Operation | None = None,
) -> DataLocation:
    """The active location of ``type`` with the lowest priority (then name), optionally at ``site``,
    not in ``exclude`` and serving ``operation``; NoLocation if there is none."""
    query = select(DataLocation).where(DataLocation.type == type, col(DataLocation.active).is_(True))
    if site is not None:
        query = query.where(DataLocation.site == site)
    if exclude:
        query = query.where(col(DataLocation.name).not_in(list(exclude)))
    for loc in session.exec(query.order_by(col(DataLocation.priority), col(DataLocation.name))):
        if operation is None or operation in loc.served():
            return loc
    where = f" at site {site!r}" if site else ""
    serving = f" serving {operation.value}" if operation else ""
    skipped = f" (besides {', '.join(sorted(exclude))})" if exclude else ""
    raise NoLocation(f"no active {type.value} location{serving}{where}{skipped}")


def best_for(session: Session, operation: Operation) -> DataLocation:
    """The preferred active location, of whichever type, that serves ``operation``."""
    types = [t for t in LocationType if operation in OPERATIONS[t] | OPTIONAL_OPERATIONS.get(t, frozenset())]
    found = []
    for type in types:
        try:
            found.append(best_location(session, type, operation=operation))
        except NoLocation:
            continue
    if not found:
        raise NoLocation(
            f"no active location serves {operation.value}; add one with `unembargo locations add`"
        )
    return min(found, key=lambda loc: (loc.priority, loc.name))


def ensure_site(session: Session, name: str, short_name: str | None = None, description: str = "") -> Site:
    """The site ``name``, created if new (short name derived from the name unless given)."""
    site = session.get(Site, name)
    if site is None:
        site = Site(name=name, short_name=check_site_short(short_name or short_name_for(name)),
                    description=description)  # fmt: skip
        session.add(site)
    elif short_name is not None and short_name != site.short_name:
        site.short_name = check_site_short(short_name)
        session.add(site)
    return site


def upsert_location(session: Session, location: DataLocation, short_name: str | None = None) -> DataLocation:
    """Create or replace a location (and create its site if new); committed."""
    check_name("location", location.name)
    location.type = LocationType(location.type)
    location.storage = StorageType(location.storage)
    if location.operations:
        location.operations = check_operations(location.type, location.operations.split(","))
    ensure_site(session, location.site, short_name)
    previous = session.get(DataLocation, location.name)
    if previous is not None and location.legacy_queue is None:
        location.legacy_queue = previous.legacy_queue
    merged = session.merge(location)
    session.commit()
    return merged
