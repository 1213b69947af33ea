"""The tape front end the rawintegrity flow uses: put, is_migrated, tape_checksum, remove.

This one is the local stack's: a folder with a disk cache, where puts land, and a tape, where the
stack's migration service (``unembargo.devstack.tape``) moves files some time later. A site's tape
system (an SRM or XRootD front end, HPSS) replaces it by offering the same five calls.

    root/cache/<lfn>        written by put (a temporary name, then renamed: never partial)
    root/tape/<lfn>         the migrated copy; tape_checksum reads what tape holds
    root/migrations/<lfn>   JSON {"put": <epoch s>, "migrated": <epoch s>}, written with the copy
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from unembargo.models.rawintegrity import check_lfn

CHUNK = 8 * 1024 * 1024


def adler32_of(path: Path) -> tuple[int, str]:
    """(size, adler32 as 8 lower-case hex digits) of a file, read once."""
    adler, size = 1, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            adler = zlib.adler32(chunk, adler)
            size += len(chunk)
    return size, f"{adler:08x}"


def copy_with_adler32(source: Path, target: Path) -> tuple[int, str]:
    """Copy ``source`` to ``target`` durably (temporary name, fsync, rename); (size, adler32) read."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    adler, size = 1, 0
    try:
        with open(source, "rb") as src, open(temp, "wb") as out:
            while chunk := src.read(CHUNK):
                adler = zlib.adler32(chunk, adler)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return size, f"{adler:08x}"


@dataclass(frozen=True)
class TapeCopy:
    """What tape holds of a file: size, adler32, and the seconds from put to migration if known."""

    size: int
    adler32: str
    migration_s: float | None


class LocalTape:
    """The local stack's tape location (see the module docstring for its layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _under(self, area: str, lfn: str) -> Path:
        return self.root / area / check_lfn(lfn)

    def cache_path(self, lfn: str) -> Path:
        return self._under("cache", lfn)

    def tape_path(self, lfn: str) -> Path:
        return self._under("tape", lfn)

    def record_path(self, lfn: str) -> Path:
        return self._under("migrations", lfn)

    def put(self, lfn: str, source: Path) -> tuple[int, str]:
        """Write ``source`` to the disk cache; (size, adler32) of what was written."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"tape location {self.root} is not there (not mounted?); will retry")
        return copy_with_adler32(source, self.cache_path(lfn))

    def in_cache(self, lfn: str) -> tuple[int, str] | None:
        """(size, adler32) of the cache copy waiting for migration, else None."""
        path = self.cache_path(lfn)
        return adler32_of(path) if path.is_file() else None

    def is_migrated(self, lfn: str) -> bool:
        return self.tape_path(lfn).is_file()

    def tape_checksum(self, lfn: str) -> TapeCopy | None:
        """What tape holds of ``lfn`` (read back from tape), else None."""
        path = self.tape_path(lfn)
        if not path.is_file():
            return None
        size, adler = adler32_of(path)
        migration_s = None
        try:
            times = json.loads(self.record_path(lfn).read_text())
            migration_s = float(times["migrated"]) - float(times["put"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return TapeCopy(size, adler, migration_s)

    def remove(self, lfn: str) -> bool:
        """Remove every copy of ``lfn`` (cache and tape); True if there was one."""
        found = False
        for path in (self.cache_path(lfn), self.tape_path(lfn), self.record_path(lfn)):
            if path.is_file():
                path.unlink()
                found = True
        return found

    def migrate(self, lfn: str, corrupt: bool = False) -> None:
        """Move a cache copy to tape (the tape system's job; ``corrupt`` flips its first byte)."""
        cache, tape = self.cache_path(lfn), self.tape_path(lfn)
        put_at = cache.stat().st_mtime
        tape.parent.mkdir(parents=True, exist_ok=True)
        temp = tape.with_name(f".{tape.name}.{uuid.uuid4().hex[:8]}.partial")
        shutil.copyfile(cache, temp)
        if corrupt:
            with open(temp, "r+b") as f:
                first = f.read(1)
                f.seek(0)
                f.write(bytes([(first[0] ^ 0xFF) if first else 0]))
        record = self.record_path(lfn)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"put": put_at, "migrated": time.time()}))
        os.replace(temp, tape)
        cache.unlink(missing_ok=True)

    def migrated_lfns(self, folder: str) -> list[str]:
        """LFNs on tape under ``folder``, sorted."""
        base = self.root / "tape"
        top = base / check_lfn(folder)
        if not top.is_dir():
            return []
        return sorted(
            p.relative_to(base).as_posix()
            for p in top.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def cached_lfns(self) -> list[str]:
        """LFNs in the disk cache, oldest first (temporary files are skipped)."""
        base = self.root / "cache"
        if not base.is_dir():
            return []
        found = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
        found.sort(key=lambda p: p.stat().st_mtime)
        return [p.relative_to(base).as_posix() for p in found]
