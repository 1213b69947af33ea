"""Tars of the CCAT flow: built deterministically with their sha256, read back verified.

A package is a tar of one observation's raw files; a transfer package is a tar of
package tars. The same members always give the same bytes (sorted names, fixed
owner, mode and time), so a tar rebuilt after a crash has the checksum the first one
had. Every member is hashed as it is read and compared with what it should be; the
tar goes to a staging name of its attempt's own beside its final one (``staging_for``: what a
killed attempt left there is removed first) and is renamed only when complete.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from unembargo.adapters.destination import remove_stale_staging, staging_path
from unembargo.models.errors import ChecksumMismatch, SourceMismatch

CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """A file to put in a tar under ``name``, with the sha256 it must have."""

    name: str
    path: Path
    checksum: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Hashing:
    """A write-only file that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def tell(self) -> int:
        return self.size


class _Verified:
    """A read-only file that hashes what is read, for checking a member as it is copied."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data


def staging_for(final: Path) -> Path:
    """A staging name of this attempt's own for ``final``, once what a killed attempt left
    beside it is removed."""
    remove_stale_staging(final)
    return staging_path(final)


def install(tmp: Path, final: Path) -> None:
    """Make ``tmp`` durable and give it its final name."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def build(members: Iterable[Member], out: Path) -> tuple[int, str]:
    """Write a tar of ``members`` at ``out``; its (size, sha256).

    A member whose bytes do not match its checksum is SourceMismatch: nothing is installed.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_for(out)
    try:
        with open(tmp, "wb") as raw:
            sink = _Hashing(raw)
            with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for m in sorted(members, key=lambda m: m.name):
                    info = tarfile.TarInfo(m.name)
                    info.size = m.path.stat().st_size
                    info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
                    with open(m.path, "rb") as f:
                        reader = _Verified(f)
                        tar.addfile(info, reader)
                    if reader.digest.hexdigest() != m.checksum:
                        raise SourceMismatch(
                            f"{m.name} at {m.path.parent} has sha256 {reader.digest.hexdigest()[:12]}..., "
                            f"filed as {m.checksum[:12]}...: it changed since filing; file it again"
                        )
        install(tmp, out)
        return sink.size, sink.digest.hexdigest()
    finally:
        tmp.unlink(missing_ok=True)


def extract(tar_path: Path, name: str, out: Path, checksum: str) -> int:
    """Extract member ``name`` of ``tar_path`` to ``out`` if its sha256 is ``checksum``; its size.

    A member that does not match is ChecksumMismatch and leaves nothing at ``out``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_for(out)
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            try:
                info = tar.getmember(name)
            except KeyError:
                raise ChecksumMismatch(f"{tar_path.name} has no member {name}") from None
            src = tar.extractfile(info)
            if src is None:
                raise ChecksumMismatch(f"{tar_path.name}: member {name} is not a file")
            digest = hashlib.sha256()
            with src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
        if digest.hexdigest() != checksum:
            raise ChecksumMismatch(
                f"{name} in {tar_path.name} has sha256 {digest.hexdigest()[:12]}..., "
                f"expected {checksum[:12]}..."
            )
        install(tmp, out)
        return out.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)
