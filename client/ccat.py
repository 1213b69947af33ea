"""The CCAT flow's use-cases: file an observation's raw files, start its package workflow,
stage or delete a package, and say where every copy of a package is.

    >>> with Session(engine) as s:                                  # doctest: +SKIP
    ...     file_observation(s, "tel-source", "obs-0001", [Path("/data/obs-0001/a.fits")])
    FilingResult(observation='obs-0001', filed=1, already=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, col, select
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

# Filing is the adapter's: `ccat file` and the directory watch's scan file the same way.
from unembargo.adapters.ccat_filing import FilingResult as FilingResult
from unembargo.adapters.ccat_filing import file_observation as file_observation
from unembargo.models.ccat import (
    DELETION,
    DELETION_WORKFLOW,
    FILE,
    PACKAGE_WORKFLOW,
    STAGE_WORKFLOW,
    STAGING,
    WATCH_WORKFLOW,
    CcatPolicy,
    DeletionInput,
    PackageInput,
    StageInput,
    WatchInput,
    deletion_workflow_id,
    package_workflow_id,
    stage_workflow_id,
    watch_workflow_id,
)
from unembargo.models.ccat_tables import (
    DataTransferPackage,
    PhysicalCopy,
    RawDataFile,
    RawDataPackage,
    place,
)
from unembargo.models.errors import DeletionRefused, UnsafeKey
from unembargo.models.locations import DataLocation, LocationType, get_location


async def start_package(
    client: Client, session: Session, task_queue: str, package: str, source: str, policy: CcatPolicy
) -> tuple[str, str]:
    """Start the package workflow of an observation filed at ``source``; (id, outcome)."""
    inp = PackageInput(package, place(session, get_location(session, source)), policy)
    return await _start(client, PACKAGE_WORKFLOW, inp, package_workflow_id(package), task_queue)


async def start_watch(
    client: Client,
    session: Session,
    task_queue: str,
    source: str,
    policy: CcatPolicy,
    poll_s: float = 30.0,
    min_age_s: float = 30.0,
) -> tuple[str, str]:
    """Start the directory watch of a SOURCE (one per location, ever running); (id, outcome)."""
    loc = get_location(session, source)
    if loc.type != LocationType.SOURCE or not loc.path:
        raise UnsafeKey(f"{source} is a {loc.type} location; a watch scans a SOURCE disk")
    inp = WatchInput(place(session, loc), policy, poll_s, min_age_s)
    return await _start(client, WATCH_WORKFLOW, inp, watch_workflow_id(source), task_queue)


async def start_stage(
    client: Client, session: Session, task_queue: str, package: str, location: str
) -> WorkflowHandle[object, object]:
    loc = get_location(session, location)
    if STAGING not in {op.value for op in loc.served()}:
        raise UnsafeKey(f"{location} is a {loc.type} location; stage to a processing location")
    wid = stage_workflow_id(package, location)
    await _start(client, STAGE_WORKFLOW, StageInput(package, place(session, loc)), wid, task_queue)
    return client.get_workflow_handle(wid)


async def start_deletion(
    client: Client, session: Session, task_queue: str, kind: str, unit: str, location: str
) -> WorkflowHandle[object, object]:
    """Delete one copy (the activity refuses, DeletionRefused, unless the rule holds)."""
    found = get_location(session, location)
    if DELETION not in {op.value for op in found.served()}:
        raise DeletionRefused(f"{location} is a {found.type} location: this flow never deletes from it")
    loc = place(session, found)
    wid = deletion_workflow_id(kind, unit, location)
    await _start(
        client, DELETION_WORKFLOW, DeletionInput(kind, unit, location, loc.queue(DELETION)), wid, task_queue
    )
    return client.get_workflow_handle(wid)


async def _start(client: Client, workflow: str, inp: object, wid: str, task_queue: str) -> tuple[str, str]:
    try:
        await client.start_workflow(
            workflow,
            inp,
            id=wid,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        desc = await client.get_workflow_handle(wid).describe()
        return wid, (desc.status.name.lower() if desc.status else "running")
    return wid, "started"


@dataclass(frozen=True)
class CopyView:
    location: str
    site: str
    type: str
    kind: str
    state: str
    verified: bool
    size: int
    relpath: str


@dataclass(frozen=True)
class PackageView:
    """Where a package is: its state, its bundle, and every copy of it (or of its files)."""

    package: str
    state: str
    files: int
    size: int
    checksum: str
    transfer: str | None
    destination_site: str | None
    copies: list[CopyView] = field(default_factory=list)

    @property
    def verified_archives(self) -> list[str]:
        return sorted(
            {
                c.site
                for c in self.copies
                if c.type == LocationType.LONG_TERM_ARCHIVE and c.verified and c.state == "present"
            }
        )


def package_view(session: Session, package: str) -> PackageView | None:
    pkg = session.get(RawDataPackage, package)
    files = session.exec(select(RawDataFile).where(RawDataFile.observation == package)).all()
    if pkg is None and not files:
        return None
    dtp = session.get(DataTransferPackage, pkg.transfer) if pkg is not None and pkg.transfer else None
    units = [package, *(f.id for f in files)]
    rows = session.exec(
        select(PhysicalCopy, DataLocation)
        .join(DataLocation, col(DataLocation.name) == col(PhysicalCopy.location))
        .where(col(PhysicalCopy.unit).in_(units))
        .order_by(col(DataLocation.site), col(PhysicalCopy.location), col(PhysicalCopy.unit))
    ).all()
    copies: dict[tuple[str, str, str], CopyView] = {}
    for copy, loc in rows:
        # A SOURCE's file copies as one line: the observation's files there.
        key = (copy.location, copy.kind, copy.state)
        prev = copies.get(key)
        size = copy.size + (prev.size if prev else 0)
        verified = copy.verified and (prev.verified if prev else True)
        relpath = copy.relpath if copy.kind != FILE else str(Path(copy.relpath).parent)
        copies[key] = CopyView(
            copy.location, loc.site, loc.type, copy.kind, copy.state, verified, size, relpath
        )
    return PackageView(
        package,
        pkg.state if pkg is not None else "filed",
        len(files),
        pkg.size if pkg is not None else sum(f.size for f in files),
        pkg.checksum if pkg is not None else "",
        pkg.transfer if pkg is not None else None,
        dtp.destination_site if dtp is not None else None,
        list(copies.values()),
    )


def package_views(session: Session, limit: int = 100) -> list[PackageView]:
    """The most recently changed packages."""
    names_ = session.exec(
        select(RawDataPackage.name).order_by(col(RawDataPackage.updated).desc()).limit(limit)
    ).all()
    return [v for n in names_ if (v := package_view(session, n)) is not None]
