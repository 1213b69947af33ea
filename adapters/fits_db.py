"""The FITS database: ingest a file's headers, the calibration association cache, previews'
rows and destinations' health; and which database holds a location's rows.

An ingest is one transaction: the new diskfile and its header row appear, and the old
diskfile stops being present and canonical, together or not at all, so an ingest killed
half-way leaves the previous state and runs again from it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from unembargo.adapters import fits_check
from unembargo.adapters.fits_files import md5_of
from unembargo.models.fits import (
    FitsCalibration,
    FitsDestination,
    FitsDiskFile,
    FitsFile,
    FitsHeader,
    FitsPreview,
    HeaderValues,
)
from unembargo.models.fits_flow import (
    CAL_TYPES,
    FITS,
    INGESTED,
    REINGESTED,
    SCIENCE,
    UNCHANGED,
    CalibrationReceipt,
    Frame,
    IngestReceipt,
    backoff,
    best_calibration,
    matches,
    name_kind,
    reingest_needed,
)
from unembargo.models.locations import DataLocation, Site, get_location
from unembargo.models.tables import connect


class FitsDatabases:
    """Which database holds a location's FITS rows: the archive's own database (when it has
    one) for the archive location, the main database for every other location.

    The archive's database is connected (and migrated to every head, the ``fits`` branch with
    them) on first use, and given a copy of the archive's location and site rows, which its
    rows' foreign keys name; the main database stays the locations' register.
    """

    def __init__(self, main: Callable[[], Engine], archive: str, archive_url: str | None) -> None:
        self._main = main
        self.archive = archive
        self._archive_url = archive_url
        self._archive: Engine | None = None
        self._lock = threading.Lock()

    def separate(self, location: str) -> bool:
        """Whether ``location``'s rows live in a database of their own (the archive's)."""
        return location == self.archive and self._archive_url is not None

    def engine_for(self, location: str) -> Engine:
        if not self.separate(location):
            return self._main()
        with self._lock:
            if self._archive is None:
                assert self._archive_url is not None
                engine = connect(self._archive_url)
                _copy_location(self._main(), engine, location)
                self._archive = engine
        return self._archive

    def session(self, location: str) -> Session:
        return Session(self.engine_for(location))


def _copy_location(main: Engine, target: Engine, name: str) -> None:
    """The location ``name`` and its site, as the main database has them, into ``target``."""
    with Session(main) as src:
        loc = get_location(src, name)
        site = src.get(Site, loc.site)
        rows: list[Site | DataLocation] = [Site(**site.model_dump(warnings=False))] if site else []
        rows.append(DataLocation(**loc.model_dump(warnings=False)))
    with Session(target) as session:
        for row in rows:
            session.merge(row)
        session.commit()


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def file_row(session: Session, name: str, create: bool = False) -> FitsFile | None:
    row = session.exec(select(FitsFile).where(FitsFile.name == name)).first()
    if row is None and create:
        row = FitsFile(name=name)
        session.add(row)
        session.flush()
    return row


def current(session: Session, name: str, location: str) -> FitsDiskFile | None:
    """The present, canonical diskfile of ``name`` at ``location``."""
    return session.exec(
        select(FitsDiskFile)
        .join(FitsFile, col(FitsFile.id) == col(FitsDiskFile.file_id))
        .where(FitsFile.name == name, FitsDiskFile.location == location)
        .where(col(FitsDiskFile.canonical).is_(True), col(FitsDiskFile.present).is_(True))
    ).first()


def header_of(session: Session, diskfile: FitsDiskFile) -> FitsHeader | None:
    return session.exec(select(FitsHeader).where(FitsHeader.diskfile_id == diskfile.id)).first()


def ingest(
    session: Session,
    name: str,
    location: str,
    path: Path,
    force: bool = False,
    force_md5: bool = False,
    before: Callable[[str], None] | None = None,
) -> IngestReceipt:
    """Ingest ``path`` (``name`` at ``location``) unless its current diskfile says it is unchanged.

    ``before`` hears the outcome (ingested, reingested) just before it is written.
    """
    stat = path.stat()
    lastmod = datetime.fromtimestamp(stat.st_mtime, UTC)
    now = current(session, name, location)
    md5 = md5_of(path) if (now is None or force or force_md5) else None
    held = None if now is None else (now.lastmod, now.md5)
    if not reingest_needed(held, lastmod, md5, force, force_md5):
        assert now is not None
        header = header_of(session, now)
        return IngestReceipt(
            UNCHANGED, now.md5, now.size, now.fits_ok,
            header.instrument if header else None, header.observation_type if header else None,
        )  # fmt: skip
    md5 = md5 or md5_of(path)
    outcome = INGESTED if now is None else REINGESTED
    if before is not None:
        before(outcome)
    verdict = fits_check.check(path)
    values = fits_check.headers(path) if verdict.ok else HeaderValues()
    file = file_row(session, name, create=True)
    assert file is not None and file.id is not None
    if now is not None:
        now.present = False
        now.canonical = False
        session.add(now)
    disk = FitsDiskFile(
        file_id=file.id, location=location, path=name, md5=md5, size=stat.st_size, lastmod=lastmod,
        fits_ok=verdict.ok, fits_warnings=verdict.report("warnings"), fits_errors=verdict.report("errors"),
    )  # fmt: skip
    session.add(disk)
    session.flush()
    assert disk.id is not None
    session.add(FitsHeader(diskfile_id=disk.id, **values.model_dump()))
    session.commit()
    return IngestReceipt(outcome, md5, stat.st_size, verdict.ok, values.instrument, values.observation_type)


# ---------------------------------------------------------------------------- calibrations


def _frames(session: Session, location: str, instrument: str | None, binning: str | None) -> list[Frame]:
    """Every current file of ``instrument`` and ``binning`` at ``location``, as frames."""
    rows = session.exec(
        select(FitsFile.name, FitsHeader)
        .join(FitsDiskFile, col(FitsDiskFile.file_id) == col(FitsFile.id))
        .join(FitsHeader, col(FitsHeader.diskfile_id) == col(FitsDiskFile.id))
        .where(FitsDiskFile.location == location, col(FitsDiskFile.canonical).is_(True))
        .where(col(FitsDiskFile.present).is_(True), col(FitsDiskFile.fits_ok).is_(True))
        .where(FitsHeader.instrument == instrument, FitsHeader.binning == binning)
    ).all()
    return [_frame(name, h) for name, h in rows]


def _frame(name: str, h: FitsHeader) -> Frame:
    return Frame(name, h.instrument, h.observation_type, h.binning, h.filter, h.exposure_time, h.ut_datetime)


def _associate(
    session: Session, science: Frame, frames: list[Frame], location: str, window_days: float
) -> dict[str, str | None]:
    """Store the science frame's best calibration of each type; what was found."""
    sci = file_row(session, science.name)
    assert sci is not None and sci.id is not None
    found: dict[str, str | None] = {}
    for cal_type in CAL_TYPES:
        best = best_calibration(science, frames, cal_type, window_days)
        found[cal_type] = best.name if best else None
        row = session.exec(
            select(FitsCalibration).where(
                FitsCalibration.science_file_id == sci.id,
                FitsCalibration.location == location,
                FitsCalibration.cal_type == cal_type,
            )
        ).first()
        if best is None:
            if row is not None:
                session.delete(row)
            continue
        cal = file_row(session, best.name)
        assert cal is not None and cal.id is not None
        apart = _days(science, best)
        if row is None:
            row = FitsCalibration(science_file_id=sci.id, location=location, cal_type=cal_type,
                                  cal_file_id=cal.id, days_apart=apart)  # fmt: skip
        else:
            row.cal_file_id, row.days_apart, row.made = cal.id, apart, datetime.now(UTC)
        session.add(row)
    return found


def _days(a: Frame, b: Frame) -> float:
    if a.ut_datetime is None or b.ut_datetime is None:
        return 0.0
    return abs((_utc(a.ut_datetime) - _utc(b.ut_datetime)).total_seconds()) / 86400


def associate(session: Session, name: str, location: str, window_days: float) -> CalibrationReceipt:
    """The calibration cache for ``name``: a science frame gets its bias, flat and dark; a
    calibration is offered to every science frame it matches (one that came first)."""
    disk = current(session, name, location)
    header = header_of(session, disk) if disk else None
    if disk is None or header is None:
        raise LookupError(f"{name} has no current diskfile at {location}: ingest it first")
    me = _frame(name, header)
    frames = _frames(session, location, me.instrument, me.binning)
    if me.observation_type == SCIENCE:
        found = _associate(session, me, frames, location, window_days)
        session.commit()
        return CalibrationReceipt(science=True, found=found)
    if me.observation_type in CAL_TYPES:
        for sci in frames:
            if sci.observation_type == SCIENCE and matches(sci, me, me.observation_type):
                _associate(session, sci, frames, location, window_days)
        session.commit()
    return CalibrationReceipt(science=False)


def associations(session: Session, name: str, location: str) -> dict[str, str]:
    """Calibration type -> file name of ``name``'s cached associations."""
    sci = file_row(session, name)
    if sci is None:
        return {}
    rows = session.exec(
        select(FitsCalibration.cal_type, FitsFile.name)
        .join(FitsFile, col(FitsFile.id) == col(FitsCalibration.cal_file_id))
        .where(FitsCalibration.science_file_id == sci.id, FitsCalibration.location == location)
    ).all()
    return dict(rows)


# ---------------------------------------------------------------------------- previews


def preview_done(session: Session, name: str, location: str, md5: str) -> FitsPreview | None:
    """The preview of ``name`` at ``location`` if it was made from the version ``md5``."""
    file = file_row(session, name)
    if file is None:
        return None
    row = session.get(FitsPreview, (file.id, location))
    return row if row is not None and row.source_md5 == md5 else None


def record_preview(
    session: Session, name: str, location: str, key: str, md5: str, size: tuple[int, int]
) -> None:
    file = file_row(session, name)
    assert file is not None and file.id is not None
    row = session.get(FitsPreview, (file.id, location)) or FitsPreview(
        file_id=file.id, location=location, key=key, source_md5=md5, width=0, height=0
    )
    row.key, row.source_md5, (row.width, row.height), row.made = key, md5, size, datetime.now(UTC)
    session.add(row)
    session.commit()


# ---------------------------------------------------------------------------- destinations


def backed_off(session: Session, name: str, now: datetime) -> FitsDestination | None:
    """The destination's row while it is backed off (a recent failure), else None."""
    row = session.get(FitsDestination, name)
    if row is None or row.backoff_until is None or _utc(row.backoff_until) <= now:
        return None
    return row


def destination_failed(
    session: Session, name: str, error: str, now: datetime, initial_s: float, maximum_s: float
) -> datetime:
    """Note a failure: every export to ``name`` waits until the returned time."""
    row = session.get(FitsDestination, name) or FitsDestination(name=name)
    # Failures of files exported at once count once per backoff period, not once per file.
    if row.backoff_until is None or _utc(row.backoff_until) <= now:
        row.failures += 1
        row.backoff_until = now + backoff(row.failures, initial_s, maximum_s)
    row.last_error = error[:500]
    session.add(row)
    session.commit()
    return _utc(row.backoff_until)


def destination_ok(session: Session, name: str, now: datetime) -> None:
    row = session.get(FitsDestination, name)
    if row is not None and (row.failures or row.backoff_until):
        row.failures, row.backoff_until, row.last_ok = 0, None, now
        session.add(row)
        session.commit()


def remaining(row: FitsDestination, now: datetime) -> timedelta:
    assert row.backoff_until is not None
    return _utc(row.backoff_until) - now


# ---------------------------------------------------------------------------- requeue


def requeue_names(
    session: Session,
    location: str,
    root: Path,
    file_re: str | None = None,
    days: float | None = None,
    path: str | None = None,
) -> list[str]:
    """Names to run again: the FITS files at ``path`` (a file of the dataflow disk ``root``, or
    the disk itself), else the location's ingested files; filtered by ``file_re`` and by
    ``days`` of lastmod."""
    pattern = re.compile(file_re) if file_re else None
    since = datetime.now(UTC) - timedelta(days=days) if days is not None else None
    if path is not None:
        base = root.resolve()
        target = (base / path).resolve()
        if target != base and target.parent != base:
            raise ValueError(f"--path {path!r} is not a file of the dataflow disk {root} (it is flat)")
        files = [target] if target.is_file() else sorted(p for p in target.iterdir() if p.is_file())
        names = [
            p.name
            for p in files
            if name_kind(p.name) == FITS
            and (since is None or datetime.fromtimestamp(p.stat().st_mtime, UTC) >= since)
        ]
    else:
        rows = session.exec(
            select(FitsFile.name, FitsDiskFile.lastmod)
            .join(FitsDiskFile, col(FitsDiskFile.file_id) == col(FitsFile.id))
            .where(FitsDiskFile.location == location, col(FitsDiskFile.canonical).is_(True))
            .where(col(FitsDiskFile.present).is_(True))
            .order_by(col(FitsFile.name))
        ).all()
        names = [n for n, lastmod in rows if since is None or _utc(lastmod) >= since]
    return [n for n in names if pattern is None or pattern.search(n)]
