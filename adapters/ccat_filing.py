"""Filing raw files at a SOURCE: by name (``unembargo ccat file``) or found by the directory
watch's scan of the SOURCE's folder, one observation folder at a time.

A file is complete when it is older than a minimum age and its size is the one the previous
scan saw; a folder is filed when every file in it is complete and no temporary name is
among them (a writer still at work). The scan's memory is its caller's (the sizes it
returns go into the next scan) and the database (an observation filed or packaged is
not filed again), so a scan after a restart or an outage simply catches up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, select

from unembargo.adapters.ccat_tar import sha256_file
from unembargo.models import names
from unembargo.models.ccat import FILE
from unembargo.models.ccat_tables import PhysicalCopy, RawDataFile, RawDataPackage
from unembargo.models.errors import SourceMismatch, UnsafeKey
from unembargo.models.locations import DataLocation, LocationType, get_location
from unembargo.models.names import InvalidName

# Names writers give files they have not finished (rsync's ".name.XXXXXX", editors' "~").
_TEMP_PREFIXES = (".", "~")
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", "~")


def is_temporary(name: str) -> bool:
    """A name a file has only while it is written (never filed; its folder waits)."""
    return name.startswith(_TEMP_PREFIXES) or name.endswith(_TEMP_SUFFIXES)


@dataclass(frozen=True)
class FilingResult:
    observation: str
    filed: int
    already: int


def _source_root(session: Session, source: str) -> tuple[DataLocation, Path]:
    loc = get_location(session, source)
    if loc.type != LocationType.SOURCE or not loc.path:
        raise UnsafeKey(f"{source} is a {loc.type} location; raw files are filed at a SOURCE disk")
    return loc, Path(loc.path).resolve()


def file_observation(
    session: Session, source: str, observation: str, paths: list[Path], instrument_module: str = ""
) -> FilingResult:
    """Register raw files already at a SOURCE (size and sha256 read now); filing the same
    file again is a no-op, a changed one SourceMismatch (it was filed with other bytes)."""
    names.check_name("observation", observation)
    _, root = _source_root(session, source)
    filed = already = 0
    for path in paths:
        full = path.resolve()
        if not full.is_relative_to(root) or not full.is_file():
            raise UnsafeKey(f"{path} is not a file under {source}'s path {root}")
        relpath = str(full.relative_to(root))
        size, checksum = full.stat().st_size, sha256_file(full)
        fid = f"{observation}/{full.name}"
        row = session.get(RawDataFile, fid)
        if row is not None:
            if (row.size, row.checksum) != (size, checksum):
                raise SourceMismatch(
                    f"{fid} was filed with {row.size} bytes, sha256 {row.checksum[:12]}...; the file now has "
                    f"{size} bytes, sha256 {checksum[:12]}...: give the new one another name"
                )
            already += 1
            continue
        session.add(
            RawDataFile(
                id=fid,
                name=full.name,
                observation=observation,
                instrument_module=instrument_module,
                size=size,
                checksum=checksum,
                source=source,
                relpath=relpath,
            )
        )
        session.add(
            PhysicalCopy(
                kind=FILE,
                unit=fid,
                location=source,
                relpath=relpath,
                size=size,
                checksum=checksum,
                verified=True,
            )
        )
        filed += 1
    session.commit()
    return FilingResult(observation, filed, already)


@dataclass
class SourceScan:
    """What one scan of a SOURCE's folder found and did."""

    # Observations filed by this scan.
    filed: list[str] = field(default_factory=list)
    # Observations filed (by this scan or before) and not packaged yet: to be packaged.
    ready: list[str] = field(default_factory=list)
    # Folders not complete yet, and the size of each of their files (for the next scan).
    waiting: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    # Folders whose name is no valid observation id: never filed.
    invalid: list[str] = field(default_factory=list)


def scan_source(
    session: Session, source: str, min_age_s: float, sizes: dict[str, int], now: float | None = None
) -> SourceScan:
    """File each complete observation folder of ``source`` not filed yet.

    ``sizes`` is what the previous scan returned: a file whose size differs from it (or
    that it did not see) is still being written, whatever its age.
    """
    _, root = _source_root(session, source)
    now = time.time() if now is None else now
    out = SourceScan()
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.is_symlink() or is_temporary(folder.name):
            continue
        obs = folder.name
        try:
            names.check_name("observation", obs)
        except InvalidName:
            out.invalid.append(obs)
            continue
        if session.get(RawDataPackage, obs) is not None:
            continue  # packaged: its files go once it is archived
        if session.exec(select(RawDataFile.id).where(RawDataFile.observation == obs).limit(1)).first():
            out.ready.append(obs)  # filed (here, or by `ccat file`), not packaged yet
            continue
        files = _complete_files(folder, root, min_age_s, sizes, now, out.sizes)
        if files is None:
            out.waiting += 1
            continue
        try:
            file_observation(session, source, obs, files)
        except (UnsafeKey, FileNotFoundError):
            session.rollback()  # a file went away while it was read: the next scan sees
            out.waiting += 1
            continue
        out.filed.append(obs)
        out.ready.append(obs)
    return out


def _complete_files(
    folder: Path, root: Path, min_age_s: float, before: dict[str, int], now: float, seen: dict[str, int]
) -> list[Path] | None:
    """The folder's files if all are complete, else None (their sizes noted in ``seen``).

    Only regular files directly in the folder are the observation's; subfolders and
    symlinks are not filed."""
    files: list[Path] = []
    complete = True
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            continue
        if is_temporary(entry.name):
            complete = False
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:
            complete = False  # renamed away mid-listing
            continue
        relpath = str(entry.relative_to(root))
        seen[relpath] = st.st_size
        if now - st.st_mtime < min_age_s or before.get(relpath) != st.st_size:
            complete = False
        files.append(entry)
    if complete and files:
        for entry in files:
            seen.pop(str(entry.relative_to(root)), None)
        return files
    return None
