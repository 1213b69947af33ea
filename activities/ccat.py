"""The CCAT flow's activities: disks (tar, rsync, unpack) and S3 archives, with the database.

Each checks its "done when" first, from the PhysicalCopy rows and the bytes they name,
and returns what it found without acting again. A copy row is written only after the
bytes it describes were read back and matched their checksum at that location, so the
rows say what is really where. Deletion checks the deletion rule against those rows at
the moment it deletes, whatever its caller believed.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select
from temporalio import activity

from unembargo.activities.context import Resources, checkpoint, heartbeating
from unembargo.adapters import ccat_tar
from unembargo.adapters.ccat_filing import scan_source
from unembargo.adapters.ccat_rsync import rsync
from unembargo.adapters.ccat_store import DiskStore, Store, copy, store_for
from unembargo.models.ccat import (
    BUNDLE,
    DELETION_STEPS,
    PACKAGE,
    PACKAGE_STEPS,
    SIDECAR_SUFFIX,
    STAGE_STEPS,
    STAGED_DIR,
    TRANSFER_STEPS,
    WATCH_STEPS,
    ArchiveInput,
    ArchiveReceipt,
    ArchiveSite,
    BundleInput,
    BundleReceipt,
    CcatSettings,
    CloseInput,
    CloseReceipt,
    DeleteReceipt,
    DeleteStepInput,
    DeletionStep,
    NothingFiled,
    PackageReceipt,
    PackageRef,
    PackageStep,
    PackageStepInput,
    ReplicateInput,
    RouteArchiveInput,
    RouteArchiveReceipt,
    RouteBufferInput,
    RouteBufferReceipt,
    ScanSourceInput,
    ScanSourceReceipt,
    StageReceipt,
    StageStep,
    StageStepInput,
    TransferReceipt,
    TransferStep,
    TransferStepInput,
    UnpackInput,
    UnpackReceipt,
    WatchStep,
    package_relpath,
    transfer_name,
    transfer_relpath,
)
from unembargo.models.ccat_tables import (
    CopyState,
    DataTransferPackage,
    PackageState,
    PhysicalCopy,
    RawDataFile,
    RawDataPackage,
    TransferState,
    copies_of,
    deletable,
    place,
    record_verified,
)
from unembargo.models.errors import ChecksumMismatch, DeletionRefused, UnsafeKey
from unembargo.models.locations import (
    DataLocation,
    LocationType,
    NoLocation,
    Operation,
    best_location,
    get_location,
)
from unembargo.models.tables import Effect

# At most this many invalid folder names in a scan's receipt (its history stays small).
_NAMED = 20

# Locations this flow may delete from: never a long-term archive.
DELETABLE_AT = (LocationType.SOURCE, LocationType.BUFFER, LocationType.PROCESSING)


def corrupt_once(point: str, path: Path) -> None:
    """Fault injection for tests: flip one byte of ``path`` once, when ``UNEMBARGO_CORRUPT_AT``
    names ``point`` (a marker in ``UNEMBARGO_CRASH_MARKERS`` makes it fire once)."""
    if point not in os.environ.get("UNEMBARGO_CORRUPT_AT", "").split(","):
        return
    marker = Path(os.environ["UNEMBARGO_CRASH_MARKERS"]) / f"corrupt-{point}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def verified_or_removed(store: Store, relpath: str, expected: str, what: str) -> str:
    """The sha256 of what ``store`` holds at ``relpath`` if it is ``expected``; else the copy is
    removed and ChecksumMismatch raised (the step runs again: a new copy is made)."""
    got = store.sha256(relpath)
    if got != expected:
        store.delete(relpath)
        raise ChecksumMismatch(
            f"{what} reached {store.name} with sha256 {got[:12]}..., expected {expected[:12]}...; "
            "removed, copying again"
        )
    return got


def _disk(loc: DataLocation) -> DiskStore:
    store = store_for(loc)
    if not isinstance(store, DiskStore):
        raise UnsafeKey(f"location {loc.name} is {loc.storage}; this step needs a disk (a path)")
    return store


def _ref(pkg: RawDataPackage) -> PackageRef:
    return PackageRef(pkg.name, pkg.size, pkg.checksum, pkg.source)


def _copy_row(session: Session, kind: str, unit: str, location: str) -> PhysicalCopy | None:
    return session.exec(
        select(PhysicalCopy).where(
            PhysicalCopy.kind == kind, PhysicalCopy.unit == unit, PhysicalCopy.location == location
        )
    ).first()


def _has_verified(session: Session, store: Store, kind: str, unit: str, relpath: str) -> bool:
    """Done when: a verified, readable copy row and bytes of its size at the location."""
    row = _copy_row(session, kind, unit, store.name)
    ok = row is not None and row.verified and row.state in (CopyState.PRESENT, CopyState.STAGED)
    return ok and row is not None and store.size(relpath) == row.size


class CcatActivities:
    """One instance per worker process."""

    def __init__(self, resources: Resources, ccat: CcatSettings | None = None) -> None:
        self.resources = resources
        self.ccat = ccat or CcatSettings()

    def _session(self) -> Session:
        return Session(self.resources.engine)

    def _record(self, session: Session, unit: str, step: str, action: str) -> None:
        """Ledger row just before a side effect (tests count them)."""
        session.add(Effect(obs_id=unit, step=step, action=action))
        session.commit()

    # ------------------------------------------------------------------ package flow

    @activity.defn(name=PACKAGE_STEPS[PackageStep.ROUTE].activity)
    def ccat_route_buffer(self, inp: RouteBufferInput) -> RouteBufferReceipt:
        """The buffer a package goes to: where it already is, else the best active one of its site."""
        with self._session() as session:
            source = get_location(session, inp.source)
            for row in session.exec(
                select(PhysicalCopy).where(PhysicalCopy.kind == PACKAGE, PhysicalCopy.unit == inp.package)
            ):
                loc = session.get(DataLocation, row.location)
                if (
                    loc is not None
                    and loc.type == LocationType.BUFFER
                    and loc.site == source.site
                    and row.verified
                ):
                    return RouteBufferReceipt(place(session, loc), already=True)
            best = best_location(
                session, LocationType.BUFFER, site=source.site, operation=Operation.TRANSFER_PACKAGE_CREATION
            )
            return RouteBufferReceipt(place(session, best))

    @activity.defn(name=PACKAGE_STEPS[PackageStep.PACKAGE].activity)
    def ccat_package(self, inp: PackageStepInput) -> PackageReceipt:
        """Tar the observation's filed files (each verified) into the buffer: done when the
        package's verified copy is there."""
        step = PackageStep.PACKAGE
        with self._session() as session:
            buffer = _disk(get_location(session, inp.buffer))
            source = _disk(get_location(session, inp.source))
            relpath = package_relpath(inp.package)
            pkg = session.get(RawDataPackage, inp.package)
            if (
                pkg is not None
                and pkg.checksum
                and _has_verified(session, buffer, PACKAGE, inp.package, relpath)
            ):
                return PackageReceipt(pkg.name, pkg.files, pkg.size, pkg.checksum, already=True)
            files = session.exec(
                select(RawDataFile).where(
                    RawDataFile.observation == inp.package, RawDataFile.source == inp.source
                )
            ).all()
            if not files:
                raise NothingFiled(
                    f"no files of observation {inp.package} are filed at {inp.source}; "
                    "file them with `unembargo ccat file`"
                )
            members = [ccat_tar.Member(f.name, source.path(f.relpath), f.checksum) for f in files]
            checkpoint("ccat_package", "acting")
            self._record(session, inp.package, step, "tar")
            with heartbeating():
                size, checksum = ccat_tar.build(members, buffer.path(relpath))
            checkpoint("ccat_package", "acted")
            pkg = pkg or RawDataPackage(name=inp.package, observation=inp.package, source=inp.source)
            pkg.files, pkg.size, pkg.checksum = len(files), size, checksum
            pkg.updated = datetime.now(UTC)
            session.add(pkg)
            record_verified(session, PACKAGE, inp.package, inp.buffer, relpath, size, checksum)
            session.commit()
            return PackageReceipt(inp.package, len(files), size, checksum)

    @activity.defn(name=PACKAGE_STEPS[PackageStep.BUNDLE].activity)
    def ccat_bundle(self, inp: BundleInput) -> BundleReceipt:
        """Put the package in its buffer's open transfer package (a new one when none has room)."""
        limit = self.ccat.bundle_limit_bytes
        with self._session() as session:
            pkg = session.get(RawDataPackage, inp.package)
            if pkg is None or not pkg.checksum:
                raise NothingFiled(f"package {inp.package} was not made; run its package step first")
            if pkg.transfer is not None:
                return BundleReceipt(pkg.transfer)
            open_ = session.exec(
                select(DataTransferPackage)
                .where(
                    DataTransferPackage.buffer == inp.buffer, DataTransferPackage.state == TransferState.OPEN
                )
                .order_by(col(DataTransferPackage.seq))
            ).all()
            # The oldest open bundle with room (an empty one takes any package).
            dtp = next((d for d in open_ if d.size == 0 or d.size + pkg.size <= limit), None)
            if dtp is None:
                seq = session.exec(
                    select(func.max(DataTransferPackage.seq)).where(DataTransferPackage.buffer == inp.buffer)
                ).one()
                seq = (seq or 0) + 1
                dtp = DataTransferPackage(name=transfer_name(inp.buffer, seq), buffer=inp.buffer, seq=seq)
                session.add(dtp)
                session.flush()
            # Only an OPEN bundle takes it: a close that got there first leaves rowcount 0.
            took = session.execute(
                update(DataTransferPackage)
                .where(
                    col(DataTransferPackage.name) == dtp.name,
                    col(DataTransferPackage.state) == TransferState.OPEN,
                )
                .values(size=DataTransferPackage.size + pkg.size)
            )
            if took.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                raise RuntimeError(f"transfer package {dtp.name} closed meanwhile; bundling again")
            pkg.transfer, pkg.state = dtp.name, PackageState.BUNDLED
            session.add(pkg)
            session.commit()
            session.refresh(dtp)
            # Full: another package like this one would not fit.
            return BundleReceipt(dtp.name, full=dtp.size + pkg.size > limit)

    # ------------------------------------------------------------------ transfer flow

    def _close_receipt(self, session: Session, dtp: DataTransferPackage) -> CloseReceipt:
        members = session.exec(
            select(RawDataPackage)
            .where(RawDataPackage.transfer == dtp.name)
            .order_by(col(RawDataPackage.name))
        ).all()
        sources = {}
        for name in {m.source for m in members}:
            sources[name] = place(session, get_location(session, name))
        return CloseReceipt(dtp.size, dtp.checksum, [_ref(m) for m in members], sources)

    @activity.defn(name=TRANSFER_STEPS[TransferStep.CLOSE].activity)
    def ccat_close_bundle(self, inp: CloseInput) -> CloseReceipt:
        """Close the bundle to new packages and tar its packages: done when its verified copy is there."""
        with self._session() as session:
            dtp = session.get(DataTransferPackage, inp.transfer)
            if dtp is None:
                raise NothingFiled(f"transfer package {inp.transfer} is not known")
            buffer = _disk(get_location(session, inp.buffer))
            relpath = transfer_relpath(inp.transfer)
            if dtp.state != TransferState.OPEN and _has_verified(session, buffer, BUNDLE, dtp.name, relpath):
                return self._close_receipt(session, dtp)
            session.execute(
                update(DataTransferPackage)
                .where(col(DataTransferPackage.name) == dtp.name)
                .where(col(DataTransferPackage.state) == TransferState.OPEN)
                .values(state=TransferState.CLOSED)
            )
            session.commit()
            members = session.exec(select(RawDataPackage).where(RawDataPackage.transfer == dtp.name)).all()
            tar_members = [
                ccat_tar.Member(ccat_tar_name(m.name), buffer.path(package_relpath(m.name)), m.checksum)
                for m in members
            ]
            self._record(session, dtp.name, TransferStep.CLOSE, "tar")
            with heartbeating():
                size, checksum = ccat_tar.build(tar_members, buffer.path(relpath))
            session.refresh(dtp)
            dtp.size, dtp.checksum, dtp.updated = size, checksum, datetime.now(UTC)
            session.add(dtp)
            record_verified(session, BUNDLE, dtp.name, inp.buffer, relpath, size, checksum)
            session.commit()
            return self._close_receipt(session, dtp)

    def _archive_site(self, session: Session, site: str) -> ArchiveSite:
        buffer = best_location(session, LocationType.BUFFER, site=site, operation=Operation.UNPACKING)
        archive = best_location(
            session, LocationType.LONG_TERM_ARCHIVE, site=site, operation=Operation.ARCHIVE_TRANSFER
        )
        return ArchiveSite(site, place(session, buffer), place(session, archive))

    def _archive_sites(self, session: Session) -> list[str]:
        """Sites with an active archive and an active buffer to receive into, by name."""
        found = []
        rows = session.exec(
            select(DataLocation.site).where(DataLocation.type == LocationType.LONG_TERM_ARCHIVE)
        )
        for site in sorted(set(rows)):
            try:
                self._archive_site(session, site)
            except NoLocation:
                continue
            found.append(site)
        return found

    @activity.defn(name=TRANSFER_STEPS[TransferStep.ROUTE].activity)
    def ccat_route_archive(self, inp: RouteArchiveInput) -> RouteArchiveReceipt:
        """The archive site a bundle goes to, round-robin over the archive sites; the choice
        and its position are kept on the bundle's row, so a restart keeps both."""
        with self._session() as session:
            dtp = session.get(DataTransferPackage, inp.transfer)
            if dtp is None:
                raise NothingFiled(f"transfer package {inp.transfer} is not known")
            sites = self._archive_sites(session)
            if not sites:
                raise NoLocation("no site has an active long_term_archive and buffer to send to")
            if dtp.destination_site is None:
                routed = session.exec(select(func.max(DataTransferPackage.route_seq))).one()
                seq = 0 if routed is None else routed + 1
                session.execute(
                    update(DataTransferPackage)
                    .where(col(DataTransferPackage.name) == dtp.name)
                    .where(col(DataTransferPackage.destination_site).is_(None))
                    .values(destination_site=sites[seq % len(sites)], route_seq=seq)
                )
                session.commit()
                session.refresh(dtp)
            assert dtp.destination_site is not None
            dest = self._archive_site(session, dtp.destination_site)
            others = [self._archive_site(session, s) for s in sites if s != dtp.destination_site]
            return RouteArchiveReceipt(dest, others)

    @activity.defn(name=TRANSFER_STEPS[TransferStep.TRANSFER].activity)
    def ccat_transfer(self, inp: TransferStepInput) -> TransferReceipt:
        """rsync the bundle to the destination buffer and verify it there: done when the
        destination's verified copy is there (unless ``fresh`` asks for a new one)."""
        with self._session() as session:
            src = _disk(get_location(session, inp.source))
            dst = _disk(get_location(session, inp.destination))
            relpath = transfer_relpath(inp.transfer)
            if inp.fresh:
                dst.delete(relpath)
                row = _copy_row(session, BUNDLE, inp.transfer, inp.destination)
                if row is not None:
                    session.delete(row)
                    session.commit()
            elif _has_verified(session, dst, BUNDLE, inp.transfer, relpath):
                return TransferReceipt(inp.size, 0.0, already=True)
            checkpoint("ccat_transfer", "acting")
            self._record(session, inp.transfer, TransferStep.TRANSFER, "rsync")
            with heartbeating():
                seconds = rsync(src.path(relpath), dst.path(relpath))
                corrupt_once("transfer", dst.path(relpath))
                got = verified_or_removed(dst, relpath, inp.checksum, f"transfer package {inp.transfer}")
            checkpoint("ccat_transfer", "acted")
            record_verified(session, BUNDLE, inp.transfer, inp.destination, relpath, inp.size, got)
            _set_transfer_state(session, inp.transfer, TransferState.TRANSFERRED)
            session.commit()
            return TransferReceipt(inp.size, seconds)

    @activity.defn(name=TRANSFER_STEPS[TransferStep.UNPACK].activity)
    def ccat_unpack(self, inp: UnpackInput) -> UnpackReceipt:
        """Extract every package at the destination buffer, each verified: done when each has
        its verified copy there. A package that does not match is ChecksumMismatch."""
        with self._session() as session:
            buffer = _disk(get_location(session, inp.buffer))
            tar = buffer.path(transfer_relpath(inp.transfer))
            todo = [
                p
                for p in inp.packages
                if not _has_verified(session, buffer, PACKAGE, p.name, package_relpath(p.name))
            ]
            if todo:
                checkpoint("ccat_unpack", "acting")
                self._record(session, inp.transfer, TransferStep.UNPACK, "extract")
            with heartbeating():
                for p in todo:
                    relpath = package_relpath(p.name)
                    size = ccat_tar.extract(tar, ccat_tar_name(p.name), buffer.path(relpath), p.checksum)
                    record_verified(session, PACKAGE, p.name, inp.buffer, relpath, size, p.checksum)
                    _set_package_state(session, p.name, PackageState.TRANSFERRED)
                    session.commit()
            if todo:
                checkpoint("ccat_unpack", "acted")
            _set_transfer_state(session, inp.transfer, TransferState.UNPACKED)
            session.commit()
            return UnpackReceipt(len(inp.packages))

    def _sidecar(self, session: Session, p: PackageRef, transfer: str | None) -> dict[str, Any]:
        files = session.exec(select(RawDataFile).where(RawDataFile.observation == p.name)).all()
        return {
            "package": p.name,
            "size": p.size,
            "sha256": p.checksum,
            "source": p.source,
            "transfer": transfer,
            "archived": datetime.now(UTC).isoformat(),
            "files": [
                {
                    "name": f.name,
                    "size": f.size,
                    "sha256": f.checksum,
                    "instrument_module": f.instrument_module,
                }
                for f in files
            ],
        }

    def _put_verified(
        self,
        session: Session,
        src: Store,
        dst: Store,
        p: PackageRef,
        transfer: str | None,
        step: str,
    ) -> bool:
        """Copy package ``p`` from ``src`` to archive ``dst`` with its sidecar, read it back and
        record it; False if it was there already."""
        relpath = package_relpath(p.name)
        if _has_verified(session, dst, PACKAGE, p.name, relpath):
            return False
        self._record(session, p.name, step, f"put {dst.name}")
        with tempfile.TemporaryDirectory(prefix="ccat-") as scratch:
            copy(src, dst, relpath, p.checksum, Path(scratch))
        got = verified_or_removed(dst, relpath, p.checksum, f"package {p.name}")
        dst.put_json(relpath + SIDECAR_SUFFIX, self._sidecar(session, p, transfer))
        record_verified(session, PACKAGE, p.name, dst.name, relpath, p.size, got)
        _set_package_state(session, p.name, PackageState.ARCHIVED)
        session.commit()
        return True

    @activity.defn(name=TRANSFER_STEPS[TransferStep.ARCHIVE].activity)
    def ccat_archive(self, inp: ArchiveInput) -> ArchiveReceipt:
        """Each package from the destination buffer into the site's archive, with a metadata
        sidecar, verified there: done when each has its verified archive copy."""
        with self._session() as session:
            src = _disk(get_location(session, inp.buffer))
            dst = store_for(get_location(session, inp.archive))
            done = 0
            checkpoint("ccat_archive", "acting")
            with heartbeating():
                for p in inp.packages:
                    done += self._put_verified(session, src, dst, p, inp.transfer, TransferStep.ARCHIVE)
            _set_transfer_state(session, inp.transfer, TransferState.ARCHIVED)
            session.commit()
            return ArchiveReceipt(done, len(inp.packages) - done)

    @activity.defn(name=TRANSFER_STEPS[TransferStep.REPLICATE].activity)
    def ccat_replicate(self, inp: ReplicateInput) -> ArchiveReceipt:
        """Each package from one archive to another, verified: done when each has its
        verified copy at the destination archive."""
        with self._session() as session:
            src = store_for(get_location(session, inp.source))
            dst = store_for(get_location(session, inp.destination))
            done = 0
            with heartbeating():
                for p in inp.packages:
                    row = _copy_row(session, PACKAGE, p.name, inp.source)
                    if row is None or not row.verified:
                        raise ChecksumMismatch(
                            f"package {p.name} has no verified copy at {inp.source} to copy"
                        )
                    done += self._put_verified(session, src, dst, p, None, TransferStep.REPLICATE)
            return ArchiveReceipt(done, len(inp.packages) - done)

    # ------------------------------------------------------------------ deletion and staging

    @activity.defn(name=DELETION_STEPS[DeletionStep.DELETE].activity)
    def ccat_delete(self, inp: DeleteStepInput) -> DeleteReceipt:
        """Delete a copy, only if the deletion rule holds at this moment: done when every copy
        row it is about is DELETED."""
        with self._session() as session:
            loc = get_location(session, inp.location)
            if loc.type not in DELETABLE_AT:
                raise DeletionRefused(f"{inp.location} is a {loc.type}: this flow never deletes from it")
            store = store_for(loc)
            rows = copies_of(session, inp.kind, inp.unit, inp.location)
            live = [r for r in rows if r.state != CopyState.DELETED]
            if rows and not live:
                return DeleteReceipt(0, already=True)
            deleted = 0
            # The rule, read from the copy rows before anything, and again in the transaction
            # that marks each copy, just before its bytes go.
            self._refuse_unless_deletable(session, inp)
            for row in live:
                self._refuse_unless_deletable(session, inp)
                row.state, row.updated = CopyState.DELETION_IN_PROGRESS, datetime.now(UTC)
                session.add(row)
                session.commit()
                checkpoint("ccat_delete", "acting")
                self._record(session, inp.unit, DeletionStep.DELETE, f"delete {row.relpath}")
                try:
                    store.delete(row.relpath)
                except OSError:
                    row.state = CopyState.DELETION_FAILED
                    session.add(row)
                    session.commit()
                    raise
                row.state, row.verified, row.updated = CopyState.DELETED, False, datetime.now(UTC)
                session.add(row)
                session.commit()
                deleted += 1
            return DeleteReceipt(deleted)

    def _refuse_unless_deletable(self, session: Session, inp: DeleteStepInput) -> None:
        why = deletable(session, inp.kind, inp.unit, self.ccat.min_archive_copies)
        if why is not None:
            session.rollback()
            raise DeletionRefused(f"{inp.kind} {inp.unit} at {inp.location} kept: {why}")

    # ------------------------------------------------------------------ the directory watch

    @activity.defn(name=WATCH_STEPS[WatchStep.SCAN].activity)
    def ccat_scan_source(self, inp: ScanSourceInput) -> ScanSourceReceipt:
        """One scan of a SOURCE's folder: file each complete observation folder not filed yet
        (done when its files are filed: a second scan files nothing)."""
        with self._session() as session, heartbeating():
            got = scan_source(session, inp.source, inp.min_age_s, inp.sizes)
        return ScanSourceReceipt(got.filed, got.ready, got.waiting, got.sizes, got.invalid[:_NAMED])

    @activity.defn(name=STAGE_STEPS[StageStep.STAGE].activity)
    def ccat_stage(self, inp: StageStepInput) -> StageReceipt:
        """Copy a package from its best verified archive copy to a processing location and unpack
        its files there, each verified: done when the staged copy is recorded."""
        with self._session() as session:
            dst_loc = get_location(session, inp.location)
            dst = _disk(dst_loc)
            pkg = session.get(RawDataPackage, inp.package)
            if pkg is None or pkg.state != PackageState.ARCHIVED:
                raise NothingFiled(f"package {inp.package} is not archived; nothing to stage")
            relpath = package_relpath(inp.package)
            files = session.exec(select(RawDataFile).where(RawDataFile.observation == inp.package)).all()
            row = _copy_row(session, PACKAGE, inp.package, inp.location)
            if (
                row is not None
                and row.state == CopyState.STAGED
                and _has_verified(session, dst, PACKAGE, inp.package, relpath)
            ):
                return StageReceipt(row.relpath, len(files), pkg.size, already=True)
            archive = self._best_archive_copy(session, inp.package)
            src = store_for(archive)
            self._record(session, inp.package, StageStep.STAGE, f"stage from {archive.name}")
            with heartbeating():
                src.get(relpath, dst.path(relpath))
                got = verified_or_removed(dst, relpath, pkg.checksum, f"package {inp.package}")
                for f in files:
                    ccat_tar.extract(
                        dst.path(relpath),
                        f.name,
                        dst.path(f"{STAGED_DIR}/{inp.package}/{f.name}"),
                        f.checksum,
                    )
            record_verified(
                session, PACKAGE, inp.package, inp.location, relpath, pkg.size, got, CopyState.STAGED
            )
            session.commit()
            return StageReceipt(archive.name, len(files), pkg.size)

    def _best_archive_copy(self, session: Session, package: str) -> DataLocation:
        """The active archive with a verified copy, lowest priority first."""
        rows = session.exec(
            select(DataLocation)
            .join(PhysicalCopy, col(PhysicalCopy.location) == col(DataLocation.name))
            .where(
                PhysicalCopy.kind == PACKAGE,
                PhysicalCopy.unit == package,
                col(PhysicalCopy.verified).is_(True),
                PhysicalCopy.state == CopyState.PRESENT,
                DataLocation.type == LocationType.LONG_TERM_ARCHIVE,
                col(DataLocation.active).is_(True),
            )
            .order_by(col(DataLocation.priority), col(DataLocation.name))
        ).first()
        if rows is None:
            raise NoLocation(f"package {package} has no verified copy in an active archive")
        return rows


def ccat_tar_name(package: str) -> str:
    """A package's member name inside a transfer package."""
    return package_relpath(package).rpartition("/")[2]


def _set_package_state(session: Session, name: str, state: PackageState) -> None:
    """Move a package forward (never back: archived stays archived)."""
    order = list(PackageState)
    pkg = session.get(RawDataPackage, name)
    if pkg is not None and order.index(PackageState(pkg.state)) < order.index(state):
        pkg.state, pkg.updated = state, datetime.now(UTC)
        session.add(pkg)


def _set_transfer_state(session: Session, name: str, state: TransferState) -> None:
    order = list(TransferState)
    dtp = session.get(DataTransferPackage, name)
    if dtp is not None and order.index(TransferState(dtp.state)) < order.index(state):
        dtp.state, dtp.updated = state, datetime.now(UTC)
        session.add(dtp)


def ccat_activities(impl: CcatActivities) -> dict[str, list[Any]]:
    """Operation -> the flow's activities a queue of that operation runs (from the step tables)."""
    found: dict[str, list[Any]] = {}
    for specs in (PACKAGE_STEPS, TRANSFER_STEPS, DELETION_STEPS, STAGE_STEPS, WATCH_STEPS):
        for spec in specs.values():
            found.setdefault(spec.location, []).append(getattr(impl, spec.activity))
    return found
