"""An embargo folder on a POSIX disk: its listing and size-checked reads, with the same
results as the S3 ones (``S3Object``s keyed by their path under a root), so the zip treats
a disk folder as it treats a bucket's. A disk has no ETag: a listing's md5 is None unless
``with_md5`` computed it by reading the file, which is how an existing zip is checked."""

from __future__ import annotations

import hashlib
import os
import stat as st
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from unembargo.adapters.s3 import READ_ATTEMPTS, S3Object, SourceChanged, disagreement
from unembargo.models.errors import RERUN, SourceMismatch, UnsafeKey

CHUNK = 8 * 1024 * 1024


def list_disk_folder(root: Path, prefix: str) -> list[S3Object]:
    """Every regular file under ``root/prefix``, keyed by its path relative to ``root``, in
    key order; none if the folder does not exist.

    Nothing under it may go unlisted: a directory that cannot be read is a SourceMismatch, and
    a directory symlink (not followed: it could lead out of the folder) an UnsafeKey.
    """
    top = root / prefix
    if not top.is_dir():
        return []
    found: list[S3Object] = []
    for dirpath, dirs, files in os.walk(top, onerror=_unlistable):
        for name in dirs:
            if (Path(dirpath) / name).is_symlink():
                raise UnsafeKey(
                    f"{Path(dirpath) / name} is a symlink to a directory in the exposure's folder; "
                    f"nothing was written. Replace it with the files themselves, then {RERUN}."
                )
        for name in files:
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # removed while listed: as a listing taken a moment later
            if st.S_ISREG(stat.st_mode):
                found.append(_entry(path.relative_to(root).as_posix(), stat))
    return sorted(found, key=lambda obj: obj.key)


def _unlistable(err: OSError) -> None:
    if isinstance(err, FileNotFoundError):
        raise SourceChanged(f"{err.filename} vanished while the folder was listed; retrying")
    raise SourceMismatch(
        f"{err.filename} in the exposure's folder cannot be listed ({err.__class__.__name__}); "
        f"nothing was written. Make it readable by the worker, then {RERUN}."
    )


def _entry(key: str, stat: os.stat_result) -> S3Object:
    return S3Object(key=key, size=stat.st_size, etag="",
                    last_modified=datetime.fromtimestamp(stat.st_mtime, UTC))  # fmt: skip


def with_md5(root: Path, members: Mapping[str, S3Object]) -> dict[str, S3Object]:
    """``members`` with each file's md5 computed by reading it (an ETag's equivalent)."""
    return {name: replace(obj, etag=_md5(root / obj.key)) for name, obj in members.items()}


def _md5(path: Path) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                md5.update(chunk)
    except FileNotFoundError:
        raise SourceChanged(f"{path} vanished since it was listed; retrying with a fresh listing") from None
    return md5.hexdigest()


def read_disk_verified(root: Path, obj: S3Object) -> bytes:
    """The bytes of the file ``root/obj.key``, checked against its listing: its size (and
    md5, where the listing has one), and that it did not change while being read.

    As with S3 reads: every read wrong in the same way means the file itself is bad
    (SourceMismatch: truncated or replaced); reads that differ mean it is being written
    (SourceChanged, retried).
    """
    path = root / obj.key
    seen: set[str] = set()
    for _ in range(READ_ATTEMPTS):
        data, problem = _read(path, obj)
        problem = problem or disagreement(obj, data)
        if problem is None:
            return data
        seen.add(problem)
    if len(seen) == 1:
        raise SourceMismatch(
            f"{path} reads back as {seen.pop()} on {READ_ATTEMPTS} reads: the file does not "
            "match the embargo butler and its listing (truncated or replaced?); re-send and "
            "re-ingest it before unembargoing this exposure"
        )
    raise SourceChanged(f"{path}: {READ_ATTEMPTS} reads disagreed with the listing and each other; retrying")


def _read(path: Path, obj: S3Object) -> tuple[bytes, str | None]:
    """The file's bytes, and how it changed while read (size or mtime), if it did."""
    try:
        with path.open("rb") as file:
            before = os.fstat(file.fileno())
            data = file.read()
            after = os.fstat(file.fileno())
    except FileNotFoundError:
        raise SourceChanged(f"{path} vanished since it was listed; retrying with a fresh listing") from None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return data, "a file that changed while it was read"
    return data, None
