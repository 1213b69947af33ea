"""The bytes of a data location: a folder (DISK) or a bucket and prefix (S3), one interface.

Every read of a whole object hashes it (sha256), so a copy is verified from what the
location really holds, never from what was sent. Names are relative paths below the
location's root; one that would leave it is UnsafeKey.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError

from unembargo.adapters.ccat_tar import CHUNK, install, sha256_file, staging_for
from unembargo.adapters.s3 import S3Client
from unembargo.adapters.s3 import connect as s3_connect
from unembargo.models.errors import UnsafeKey
from unembargo.models.locations import DataLocation, StorageType

# Object metadata key holding an object's sha256 (S3 has no sha256 of whole objects of its own).
SHA_KEY = "sha256"


class Store(Protocol):
    """What the flow's steps do with a location's bytes (``DiskStore``, ``S3Store``)."""

    name: str

    def size(self, relpath: str) -> int | None:
        """Bytes of ``relpath``, None if it is not there."""

    def sha256(self, relpath: str) -> str:
        """Hash of the bytes really there (a full read)."""

    def put(self, local: Path, relpath: str, checksum: str) -> None:
        """Store the local file under ``relpath`` (complete or not at all)."""

    def put_json(self, relpath: str, data: dict[str, Any]) -> None: ...

    def get(self, relpath: str, local: Path) -> None:
        """Copy ``relpath`` to the local file (complete or not at all)."""

    def delete(self, relpath: str) -> None:
        """Remove ``relpath``; nothing there is fine."""

    def local(self, relpath: str) -> Path | None:
        """The file's path on this machine, for a DISK location."""


def _check(relpath: str) -> str:
    parts = relpath.split("/")
    if relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UnsafeKey(f"{relpath!r} would leave its location; refused")
    return relpath


class DiskStore:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root

    def path(self, relpath: str) -> Path:
        # A missing root is an unmounted disk: retried (transient), never created.
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"location {self.name}: {self.root} is missing (not mounted?); will retry"
            )
        return self.root / _check(relpath)

    def size(self, relpath: str) -> int | None:
        path = self.path(relpath)
        return path.stat().st_size if path.is_file() else None

    def sha256(self, relpath: str) -> str:
        return sha256_file(self.path(relpath))

    def put(self, local: Path, relpath: str, checksum: str) -> None:
        final = self.path(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_for(final)
        try:
            shutil.copyfile(local, tmp)
            install(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def put_json(self, relpath: str, data: dict[str, Any]) -> None:
        final = self.path(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_for(final)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        install(tmp, final)

    def get(self, relpath: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_for(local)
        try:
            shutil.copyfile(self.path(relpath), tmp)
            install(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, relpath: str) -> None:
        self.path(relpath).unlink(missing_ok=True)

    def local(self, relpath: str) -> Path | None:
        return self.path(relpath)


class S3Store:
    def __init__(self, name: str, client: S3Client, bucket: str, prefix: str) -> None:
        self.name = name
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def key(self, relpath: str) -> str:
        return f"{self.prefix}{_check(relpath)}"

    def size(self, relpath: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(relpath))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def sha256(self, relpath: str) -> str:
        body = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))["Body"]
        digest = hashlib.sha256()
        while chunk := body.read(CHUNK):
            digest.update(chunk)
        return digest.hexdigest()

    def put(self, local: Path, relpath: str, checksum: str) -> None:
        # One PUT (or a multipart upload) is atomic: readers see the whole object or none.
        self.client.upload_file(
            str(local), self.bucket, self.key(relpath), ExtraArgs={"Metadata": {SHA_KEY: checksum}}
        )

    def put_json(self, relpath: str, data: dict[str, Any]) -> None:
        body = json.dumps(data, indent=1, sort_keys=True).encode()
        self.client.put_object(
            Bucket=self.bucket, Key=self.key(relpath), Body=body, ContentType="application/json"
        )

    def get(self, relpath: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_for(local)
        try:
            self.client.download_file(self.bucket, self.key(relpath), str(tmp))
            install(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, relpath: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(relpath))

    def local(self, relpath: str) -> Path | None:
        return None

    def copy_from(self, other: S3Store, relpath: str) -> None:
        """Server-side copy from another bucket of the same endpoint."""
        self.client.copy(
            {"Bucket": other.bucket, "Key": other.key(relpath)},
            self.bucket,
            self.key(relpath),
            ExtraArgs={"MetadataDirective": "COPY"},
        )


_clients: dict[str | None, S3Client] = {}


def store_for(location: DataLocation) -> DiskStore | S3Store:
    """The store of a location (an S3 client per endpoint, shared: boto3 clients are thread-safe)."""
    if location.storage == StorageType.S3:
        if not location.bucket:
            raise ValueError(f"S3 location {location.name} has no bucket")
        if location.endpoint not in _clients:
            _clients[location.endpoint] = s3_connect(location.endpoint or os.environ.get("S3_ENDPOINT_URL"))
        return S3Store(location.name, _clients[location.endpoint], location.bucket, location.prefix)
    if location.storage in (StorageType.DISK, StorageType.TAPE) and location.path:
        return DiskStore(location.name, Path(location.path))
    raise ValueError(f"location {location.name}: storage {location.storage} has no bytes this flow can reach")


def copy(src: Store, dst: Store, relpath: str, checksum: str, scratch: Path) -> None:
    """Copy ``relpath`` from ``src`` to ``dst``: server-side between buckets of one endpoint,
    from the file itself off a disk, through ``scratch`` otherwise."""
    if isinstance(src, S3Store) and isinstance(dst, S3Store) and src.client is dst.client:
        dst.copy_from(src, relpath)
        return
    local = src.local(relpath)
    if local is not None:
        dst.put(local, relpath, checksum)
        return
    tmp = scratch / Path(relpath).name
    try:
        src.get(relpath, tmp)
        dst.put(tmp, relpath, checksum)
    finally:
        tmp.unlink(missing_ok=True)
