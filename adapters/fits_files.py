"""Bytes of FITS files: md5s, copies, and the stores a file is exported to (a disk, an S3 bucket).

A copy is written under a temporary name beside its final one, its md5 computed from the
bytes read, flushed to disk, then renamed: a file under its final name is always whole.
Every store answers the same three questions, so the export step is written once: what
md5 and size do you hold for this name, take these bytes, give them back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError
from botocore.exceptions import ConnectionError as S3ConnectionError

from unembargo.models.errors import UnsafeKey

CHUNK = 1 << 20


class DestinationUnavailable(Exception):
    """A destination did not answer (down, refusing, timing out): retried with backoff."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def inside(root: Path, relpath: str) -> Path:
    """``root/relpath``, refusing a name that would leave ``root``."""
    base = root.resolve()
    path = (base / relpath).resolve()
    if not path.is_relative_to(base) or path == base:
        raise UnsafeKey(f"{relpath!r} would leave {base}; refused")
    return path


def copy_with_md5(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (temporary name, fsync, rename); the md5 and size of what was copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    try:
        with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


class Store(Protocol):
    """A location files are exported to or read from."""

    name: str

    def stat(self, key: str) -> tuple[str, int] | None:
        """(md5, size) of ``key``, or None when absent."""

    def put(self, key: str, src: Path, md5: str) -> None: ...

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        """A local path holding ``key``'s bytes while the block runs."""
        yield Path()


@dataclass
class DiskStore:
    name: str
    root: Path

    def stat(self, key: str) -> tuple[str, int] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return md5_of(path), path.stat().st_size

    def put(self, key: str, src: Path, md5: str) -> None:
        self._path(key).parent.mkdir(parents=True, exist_ok=True)
        copy_with_md5(src, self._path(key))

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        yield self._path(key)

    def _path(self, key: str) -> Path:
        if not self.root.is_dir():
            raise DestinationUnavailable(f"{self.name}: {self.root} is missing (not mounted?)")
        return inside(self.root, key)


@dataclass
class S3Store:
    name: str
    s3: Any
    bucket: str
    prefix: str = ""

    def stat(self, key: str) -> tuple[str, int] | None:
        try:
            head = self._call(self.s3.head_object, Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                # A HEAD's 404 does not say whether the key or the bucket is missing.
                self._call(self.s3.head_bucket, Bucket=self.bucket)
                return None
            raise
        meta = head.get("Metadata", {})
        # The md5 we sent rides along; a single-part upload's ETag is the md5 too.
        md5 = meta.get("md5") or head["ETag"].strip('"')
        return md5, int(head["ContentLength"])

    def put(self, key: str, src: Path, md5: str) -> None:
        import base64

        with src.open("rb") as body:
            # Content-MD5 makes S3 refuse bytes that do not match (a corrupted upload).
            self._call(
                self.s3.put_object,
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=body,
                ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
                Metadata={"md5": md5},
            )

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call(
            self.s3.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type
        )

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="fits-") as tmp:
            path = Path(tmp) / Path(key).name
            self._call(self.s3.download_file, self.bucket, self.prefix + key, str(path))
            yield path

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except S3ConnectionError as err:
            raise DestinationUnavailable(f"{self.name}: {err}") from None
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code.startswith("5") or code in ("ServiceUnavailable", "SlowDown", "InternalError"):
                raise DestinationUnavailable(f"{self.name}: {code}") from None
            if code == "NoSuchBucket" or (code == "404" and fn == self.s3.head_bucket):
                raise DestinationUnavailable(f"{self.name}: bucket {self.bucket!r} does not exist") from None
            raise
