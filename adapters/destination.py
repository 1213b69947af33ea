"""Files at the destination: written to a staging name, checksummed while written,
fsynced, then installed under the final name without ever replacing a file.

``os.link`` fails if the final name exists, so two writers racing on one exposure
cannot overwrite each other, and a file under its final name is always complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from unembargo.models.errors import DestinationFull
from unembargo.models.exposure import FileReceipt

CHUNK = 4 * 1024 * 1024


class Sink(Protocol):
    """Where written bytes go: a file, or a writer that hands them to one."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class ChecksumWriter:
    """A write-only, non-seekable file wrapper computing md5 and adler32 on the fly.

    Being non-seekable makes ``zipfile`` stream (data descriptors, no seek-back),
    so every byte passes through here exactly once. With ``md5=False`` the caller
    takes the md5 elsewhere (another thread) and ``md5`` is not available.
    """

    def __init__(self, raw: Sink, md5: bool = True) -> None:
        self._raw = raw
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self._adler = 1
        self.size = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        if self._md5 is not None:
            self._md5.update(data)
        self._adler = zlib.adler32(data, self._adler)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to do: whoever opened the wrapped file closes it."""

    @property
    def md5(self) -> str:
        if self._md5 is None:
            raise AttributeError("this writer takes no md5")
        return self._md5.hexdigest()

    @property
    def adler32(self) -> str:
        return f"{self._adler:08x}"


def checksums(path: Path) -> tuple[int, str, str]:
    """(size, md5, adler32) of a file, read once in large chunks."""
    md5 = hashlib.md5(usedforsecurity=False)
    adler = 1
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            adler = zlib.adler32(chunk, adler)
            size += len(chunk)
    return size, md5.hexdigest(), f"{adler:08x}"


def receipt(root: Path, path: Path) -> FileReceipt:
    """Receipt of an installed file: relative name, size and checksums."""
    size, md5, adler32 = checksums(path)
    return FileReceipt(relpath=path.relative_to(root).as_posix(), size=size, md5=md5, adler32=adler32)


def staging_path(final: Path) -> Path:
    """A unique hidden staging name beside the final one (same filesystem, same dir)."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.partial")


def remove_stale_staging(final: Path) -> int:
    """Delete staging files an earlier, crashed attempt left for ``final``."""
    removed = 0
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def staged(final: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Open a staging file for ``final``; removed again unless installed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(final)
    try:
        with open(staging, "xb") as f:
            yield f, staging
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DestinationFull(
            f"destination full: no space left under {final.parent} while writing {final.name} "
            f"({err.strerror}); nothing was installed and the staging file is removed. Free space "
            "there (or raise the quota); the step retries on its own."
        ) from err
    finally:
        staging.unlink(missing_ok=True)


def install(staging: Path, final: Path) -> bool:
    """Make ``staging`` durable and visible as ``final``; False if ``final`` exists.

    Never replaces an existing file: the caller decides whether what is there is
    the same content (done already) or a conflict.
    """
    with open(staging, "rb") as f:
        os.fsync(f.fileno())
    try:
        os.link(staging, final)
    except FileExistsError:
        return False
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


# Staging names: ours (staging_path) and the old cron tool's, for <obs_id>.zip or its yaml.
_OURS = re.compile(r"^\.(?P<final>.+)\.[0-9a-f]{12}\.partial$")
_CRON = re.compile(r"^(?P<final>.+\.zip)\.transfer-tmp$")


def parse_staging(name: str) -> tuple[str, str] | None:
    """(final name, "ours" or "cron") of a staging file's name (a path's last part), else None.

    >>> parse_staging(".MC_O_20251231_000010.zip.0123456789ab.partial")
    ('MC_O_20251231_000010.zip', 'ours')
    >>> parse_staging("MC_O_20251231_000010.zip.transfer-tmp")
    ('MC_O_20251231_000010.zip', 'cron')
    >>> parse_staging("MC_O_20251231_000010.zip") is None
    True
    """
    base = name.rpartition("/")[2]
    for made_by, pattern in (("ours", _OURS), ("cron", _CRON)):
        if found := pattern.match(base):
            return found["final"], made_by
    return None


def list_day(root: Path, day_relpath: str) -> dict[str, int]:
    """Installed files of a day folder: relative path -> size (one stat each).

    Hidden names (staging files of attempts in progress) are skipped; a missing
    day folder holds nothing, a missing root is an unmounted disk (an error).
    """
    return scan_day(root, day_relpath)[0]


def scan_day(root: Path, day_relpath: str) -> tuple[dict[str, int], dict[str, int]]:
    """(installed files, staging files) of a day folder: relative path -> size, one stat each.

    Staging files are ours and the old cron tool's (``parse_staging``); other hidden
    names are skipped. A missing day folder holds nothing, a missing root is an
    unmounted disk (an error).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"destination root {root} is missing (not mounted?)")
    folder = root / day_relpath
    try:
        entries = [entry for entry in os.scandir(folder) if entry.is_file()]
    except FileNotFoundError:
        return {}, {}
    installed: dict[str, int] = {}
    staging: dict[str, int] = {}
    for entry in entries:
        relpath = f"{day_relpath}/{entry.name}"
        if parse_staging(entry.name):
            staging[relpath] = entry.stat().st_size
        elif not entry.name.startswith("."):
            installed[relpath] = entry.stat().st_size
    return installed, staging
