"""The CCAT flow's tables (migration ``ccat_0001``) and the deletion rule they decide.

Every raw file, package and transfer package, and every copy of one at a location
(``PhysicalCopy``): a copy row says what is really at that location, and whether its
checksum was verified there. The deletion rule reads only these rows.

    >>> from sqlmodel import Session
    >>> from unembargo.models.tables import connect
    >>> with Session(connect("sqlite://")) as s:
    ...     s.add(RawDataPackage(name="obs-1", observation="obs-1", source="telescope-source"))
    ...     s.commit()
    ...     deletable(s, PACKAGE, "obs-1", min_archives=1)
    'package obs-1 is not archived yet (state packaged)'
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, String, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, select

from unembargo.models.ccat import BUNDLE, FILE, FILE_SET, PACKAGE, Place
from unembargo.models.locations import DataLocation, LocationType, operation_queues


def _now() -> datetime:
    return datetime.now(UTC)


class PackageState(StrEnum):
    PACKAGED = "packaged"  # tarred at a buffer, checksum known
    BUNDLED = "bundled"  # member of a transfer package
    TRANSFERRED = "transferred"  # unpacked and verified at an archive site's buffer
    ARCHIVED = "archived"  # in a long-term archive, verified


class TransferState(StrEnum):
    OPEN = "open"  # takes packages
    CLOSED = "closed"  # tarred, checksum known, no more packages
    TRANSFERRED = "transferred"  # at the destination buffer, verified
    UNPACKED = "unpacked"  # every package verified at the destination buffer
    ARCHIVED = "archived"  # every package archived


class CopyState(StrEnum):
    PRESENT = "present"
    STAGED = "staged"
    DELETION_SCHEDULED = "deletion_scheduled"
    DELETION_IN_PROGRESS = "deletion_in_progress"
    DELETION_POSSIBLE = "deletion_possible"
    DELETED = "deleted"
    DELETION_FAILED = "deletion_failed"


# Copies whose bytes are there to read.
READABLE = (CopyState.PRESENT, CopyState.STAGED, CopyState.DELETION_SCHEDULED, CopyState.DELETION_POSSIBLE)


class RawDataFile(SQLModel, table=True):
    """One raw file of an observation, as filed at its SOURCE."""

    # "<observation>/<name>": a file name is unique within its observation.
    id: str = Field(primary_key=True)
    name: str
    observation: str = Field(index=True)
    instrument_module: str = ""
    size: int = Field(sa_type=BigInteger)
    checksum: str  # sha256, hex
    source: str = Field(foreign_key="datalocation.name")
    # Path relative to the SOURCE's path.
    relpath: str
    created: datetime = Field(default_factory=_now)


class RawDataPackage(SQLModel, table=True):
    """One observation's files in one tar."""

    name: str = Field(primary_key=True)
    observation: str = Field(index=True)
    source: str = Field(foreign_key="datalocation.name")
    files: int = 0
    size: int = Field(default=0, sa_type=BigInteger)
    checksum: str = ""
    state: PackageState = Field(default=PackageState.PACKAGED, sa_type=String, index=True)
    transfer: str | None = Field(default=None, foreign_key="datatransferpackage.name", index=True)
    updated: datetime = Field(default_factory=_now)


class DataTransferPackage(SQLModel, table=True):
    """A bundle of packages (up to a size limit), tarred at a buffer and sent as one."""

    name: str = Field(primary_key=True)
    buffer: str = Field(foreign_key="datalocation.name", index=True)
    seq: int
    # Of the tar once closed; until then the sum of its packages.
    size: int = Field(default=0, sa_type=BigInteger)
    checksum: str = ""
    state: TransferState = Field(default=TransferState.OPEN, sa_type=String, index=True)
    # The archive site chosen round-robin (kept here, so a restart keeps the choice).
    destination_site: str | None = Field(default=None, index=True)
    # Position in the round-robin, among every transfer package routed so far.
    route_seq: int | None = None
    updated: datetime = Field(default_factory=_now)


class PhysicalCopy(SQLModel, table=True):
    """The bytes of one unit (a file, a package, a transfer package) at one location."""

    __table_args__ = (UniqueConstraint("kind", "unit", "location"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str  # FILE, PACKAGE or BUNDLE
    unit: str = Field(index=True)
    location: str = Field(foreign_key="datalocation.name", index=True)
    # Path or key relative to the location's path (or bucket prefix).
    relpath: str
    size: int = Field(sa_type=BigInteger)
    checksum: str
    # The checksum was computed from the bytes at this location, and matched.
    verified: bool = False
    state: CopyState = Field(default=CopyState.PRESENT, sa_type=String)
    updated: datetime = Field(default_factory=_now)


def place(session: Session, loc: DataLocation) -> Place:
    """What a workflow needs of a location: its queue per operation."""
    queues = {op.value: q for op, q in operation_queues(session, loc).items() if op is not None}
    return Place(loc.name, loc.site, queues)


def archived_sites(session: Session, package: str) -> list[str]:
    """Sites holding a verified, readable copy of ``package`` in a long-term archive."""
    rows = session.exec(
        select(DataLocation.site)
        .join(PhysicalCopy, col(PhysicalCopy.location) == col(DataLocation.name))
        .where(
            PhysicalCopy.kind == PACKAGE,
            PhysicalCopy.unit == package,
            col(PhysicalCopy.verified).is_(True),
            col(PhysicalCopy.state).in_([s.value for s in READABLE]),
            DataLocation.type == LocationType.LONG_TERM_ARCHIVE,
        )
    )
    return sorted(set(rows))


def deletable(session: Session, kind: str, unit: str, min_archives: int) -> str | None:
    """None if a SOURCE, BUFFER or PROCESSING copy of ``unit`` may go now; else why not.

    A package (or a file set: a package's raw files) may go once the package is ARCHIVED
    with a verified copy in the long-term archives of ``min_archives`` sites; a transfer
    package once every package in it may.
    """
    if kind == BUNDLE:
        members = session.exec(select(RawDataPackage.name).where(RawDataPackage.transfer == unit)).all()
        if not members:
            return f"transfer package {unit} has no packages recorded"
        for name in members:
            why = deletable(session, PACKAGE, name, min_archives)
            if why is not None:
                return f"transfer package {unit}: {why}"
        return None
    if kind not in (PACKAGE, FILE_SET):
        return f"no deletion rule for a {kind}"
    package = session.get(RawDataPackage, unit)
    if package is None:
        return f"package {unit} is not known"
    if package.state != PackageState.ARCHIVED:
        return f"package {unit} is not archived yet (state {package.state})"
    sites = archived_sites(session, unit)
    if len(sites) < min_archives:
        have = ", ".join(sites) or "none"
        return (
            f"package {unit} has verified archive copies at {len(sites)} site(s) ({have}); "
            f"{min_archives} needed"
        )
    return None


def copies_of(session: Session, kind: str, unit: str, location: str) -> list[PhysicalCopy]:
    """The copy rows a deletion of ``kind`` ``unit`` at ``location`` is about (a file set: the
    package's files)."""
    if kind == FILE_SET:
        ids = select(RawDataFile.id).where(RawDataFile.observation == _observation(session, unit))
        query = select(PhysicalCopy).where(PhysicalCopy.kind == FILE, col(PhysicalCopy.unit).in_(ids))
    else:
        query = select(PhysicalCopy).where(PhysicalCopy.kind == kind, PhysicalCopy.unit == unit)
    return list(session.exec(query.where(PhysicalCopy.location == location).order_by(col(PhysicalCopy.unit))))


def _observation(session: Session, package: str) -> str:
    found = session.get(RawDataPackage, package)
    return found.observation if found is not None else package


def record_verified(
    session: Session,
    kind: str,
    unit: str,
    location: str,
    relpath: str,
    size: int,
    checksum: str,
    state: CopyState = CopyState.PRESENT,
) -> PhysicalCopy:
    """The row of bytes just read back at ``location`` and found to match; not committed."""
    copy = PhysicalCopy(
        kind=kind,
        unit=unit,
        location=location,
        relpath=relpath,
        size=size,
        checksum=checksum,
        verified=True,
        state=state,
    )
    return upsert_copy(session, copy)


def upsert_copy(session: Session, copy: PhysicalCopy) -> PhysicalCopy:
    """Create or replace the row of (kind, unit, location); not committed."""
    found = session.exec(
        select(PhysicalCopy).where(
            PhysicalCopy.kind == copy.kind,
            PhysicalCopy.unit == copy.unit,
            PhysicalCopy.location == copy.location,
        )
    ).first()
    if found is None:
        session.add(copy)
        return copy
    for attr in ("relpath", "size", "checksum", "verified", "state"):
        setattr(found, attr, getattr(copy, attr))
    found.updated = _now()
    session.add(found)
    return found
