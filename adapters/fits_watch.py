"""One scan of a DHS directory: which files are new or changed, settled and valid FITS.

The watcher's memory is the ``fits_seen`` table, so a restarted watcher carries on from
what it last saw: files that appeared while it was down are simply new, and a file
whose workflow was started is not started again unless its size, or (when only its
modification time moved) its md5, changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session

from unembargo.adapters import fits_check
from unembargo.adapters.fits_files import md5_of
from unembargo.models.fits import FitsSeen
from unembargo.models.fits_flow import (
    FITS,
    GROWING,
    INVALID,
    READY,
    SETTLING,
    STARTED,
    YOUNG,
    InvalidFitsName,
    check_fits_name,
    name_kind,
    settle,
)


@dataclass(frozen=True)
class Ready:
    """A settled, valid FITS file to copy: its workflow is to be started."""

    name: str
    size: int
    mtime: float
    md5: str


@dataclass
class ScanResult:
    ready: list[Ready]
    seen: int = 0
    waiting: int = 0
    # Names that have just been found invalid too often (reported once each).
    invalid: list[str] | None = None


def scan(
    session: Session,
    location: str,
    root: Path,
    min_age_s: float,
    invalid_after: int,
    now: float | None = None,
) -> ScanResult:
    """Look at every FITS name under ``root`` (flat, as the DHS writes) once."""
    if not root.is_dir():
        raise FileNotFoundError(f"DHS folder {root} is missing (not mounted?); will retry")
    now = now if now is not None else datetime.now(UTC).timestamp()
    result = ScanResult(ready=[], invalid=[])
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False) or name_kind(entry.name) != FITS:
            continue
        try:
            check_fits_name(entry.name)
        except InvalidFitsName:
            continue
        result.seen += 1
        stat = entry.stat(follow_symlinks=False)
        found = _one(
            session, location, Path(entry.path), stat.st_size, stat.st_mtime, now, min_age_s, invalid_after
        )
        if isinstance(found, Ready):
            result.ready.append(found)
        elif found == SETTLING:
            result.waiting += 1
        elif found == INVALID and result.invalid is not None:
            result.invalid.append(entry.name)
    session.commit()
    return result


def _one(
    session: Session, location: str, path: Path, size: int, mtime: float, now: float, min_age_s: float,
    invalid_after: int,
) -> Ready | str | None:  # fmt: skip
    row = session.get(FitsSeen, (location, path.name))
    if row is not None and row.size == size and row.mtime == mtime and row.state in (STARTED, INVALID):
        return None
    previous = None if row is None else (row.size, row.mtime)
    if row is None:
        row = FitsSeen(location=location, name=path.name, size=size, mtime=mtime)
    verdict = settle(now, size, mtime, previous if row.state == SETTLING else None, min_age_s)
    if row.state == STARTED and row.size == size and row.md5 is not None and verdict == READY:
        # Touched, not rewritten: the same bytes were copied before.
        if md5_of(path) == row.md5:
            row.mtime = mtime
            session.add(row)
            return None
    row.size, row.mtime, row.updated = size, mtime, datetime.now(UTC)
    if verdict in (YOUNG, GROWING):
        row.state = SETTLING
        session.add(row)
        return SETTLING
    checked = fits_check.check(path)
    if not checked.ok:
        row.failures += 1
        row.problem = checked.summary()
        newly = row.failures == invalid_after
        row.state = INVALID if row.failures >= invalid_after else SETTLING
        session.add(row)
        return INVALID if newly else SETTLING
    row.failures, row.problem = 0, ""
    session.add(row)
    return Ready(path.name, size, mtime, md5_of(path))


def mark_started(session: Session, location: str, ready: Ready) -> None:
    """Remember that ``ready``'s version has its workflow (after the start succeeded)."""
    row = session.get(FitsSeen, (location, ready.name)) or FitsSeen(
        location=location, name=ready.name, size=ready.size, mtime=ready.mtime
    )
    row.state, row.md5, row.size, row.mtime = STARTED, ready.md5, ready.size, ready.mtime
    row.updated = datetime.now(UTC)
    session.add(row)
    session.commit()
