"""The embargo bucket, read only: list an exposure's folder, read objects back verified.

Every object read is checked against the listing it came from: its byte count,
and its content against S3's own full-object checksum where the object has one
(boto3 uploads a CRC32 by default; botocore checks the body while reading it, at
C speed), else against its md5 when the ETag is a plain md5 (a multipart ETag,
``<md5>-<parts>``, is not the md5 of the object). Reads ask for the listed ETag
(``If-Match``), so an object replaced after the listing is noticed instead of zipped.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.compat import HAS_CRT
from botocore.exceptions import ClientError, FlexibleChecksumError

from unembargo.models.errors import SourceMismatch

# boto3 clients are generated at run time; no type stubs are installed.
S3Client = Any

# Keys for an S3 endpoint on loopback (the local stack's moto, which takes any key); they
# also keep boto3 away from a user's real AWS config files.
LOOPBACK_KEYS = {
    "AWS_ACCESS_KEY_ID": "unembargo-local",
    "AWS_SECRET_ACCESS_KEY": "unembargo-local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_CONFIG_FILE": "/dev/null",
}


def connect(endpoint_url: str | None) -> S3Client:
    """A boto3 S3 client (thread-safe) for ``endpoint_url``.

    It checks a read's body against S3's own checksum when asked to
    (``ChecksumMode``, which ``read_verified`` always sends).
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(
            max_pool_connections=32,
            retries={"max_attempts": 5, "mode": "standard"},
            response_checksum_validation="when_required",
        ),
    )


def use_endpoint_for_resources(endpoint_url: str | None) -> None:
    """Point lsst-resources (butler datastores in S3) at ``endpoint_url`` unless the environment
    names one already: it reads only ``S3_ENDPOINT_URL``, and caches its client per endpoint,
    so this runs before the first butler is built."""
    if endpoint_url:
        os.environ.setdefault("S3_ENDPOINT_URL", endpoint_url)


def use_loopback_credentials(endpoint_url: str | None) -> None:
    """Give boto3 the loopback keys when the endpoint is on 127.0.0.1, unless keys are set."""
    if endpoint_url and "127.0.0.1" in endpoint_url:
        for key, value in LOOPBACK_KEYS.items():
            os.environ.setdefault(key, value)


_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
# S3 checksums botocore checks a body against while reading it (CRC32C and CRC64NVME
# need awscrt). A composite one, ``<base64>-<parts>`` of a multipart upload's parts,
# it cannot check.
_CHECKED = ("crc32", "sha1", "sha256", *(("crc32c", "crc64nvme") if HAS_CRT else ()))
# Reads of one object that disagree with the listing before it counts as broken.
READ_ATTEMPTS = 3


class SourceChanged(Exception):
    """An object changed since it was listed, or reads of it disagree: retry the step.

    Transient (not a BadInput): the next attempt lists the folder again.
    """


@dataclass(frozen=True)
class S3Object:
    """One listed object: what the bucket says it holds."""

    key: str
    size: int
    etag: str
    last_modified: datetime

    @property
    def md5(self) -> str | None:
        """The object's md5 if its ETag is one (single-part upload), else None."""
        return self.etag if _PLAIN_MD5.match(self.etag) else None


def list_folder(client: S3Client, bucket: str, prefix: str) -> list[S3Object]:
    """Every object whose key starts with ``prefix``, in key order (all pages)."""
    return sorted(_iter_folder(client, bucket, prefix), key=lambda obj: obj.key)


def _iter_folder(client: S3Client, bucket: str, prefix: str) -> Iterator[S3Object]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield S3Object(
                key=item["Key"],
                size=int(item["Size"]),
                etag=item["ETag"].strip('"').lower(),
                last_modified=item["LastModified"],
            )


def disagreement(obj: S3Object, data: bytes, md5: bool = True) -> str | None:
    """How ``data`` differs from the listing of ``obj`` (size, then md5 unless its content
    was checked otherwise), or None."""
    if len(data) != obj.size:
        return f"{len(data)} bytes where the listing says {obj.size}"
    expected = obj.md5
    if md5 and expected is not None:
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if actual != expected:
            return f"md5 {actual} where the ETag says {expected}"
    return None


def read_verified(client: S3Client, bucket: str, obj: S3Object) -> bytes:
    """The bytes of ``obj``, checked against its listing (``read_checked``)."""
    return read_checked(client, bucket, obj)[0]


def read_checked(client: S3Client, bucket: str, obj: S3Object) -> tuple[bytes, int | None]:
    """The bytes of ``obj``, checked against its listing, and their CRC-32 where S3's
    CRC32 of the object vouched for them (else None).

    A read that disagrees is tried again: if every read comes back wrong in the
    same way, the object itself is bad (SourceMismatch, an operator must look);
    if reads differ from each other, it was the transfer (SourceChanged, retried).
    """
    seen: set[str] = set()
    for _ in range(READ_ATTEMPTS):
        try:
            data, checked, crc = _get(client, bucket, obj)
        except FlexibleChecksumError:
            problem: str | None = "a body that does not match S3's checksum of the object"
        else:
            problem = disagreement(obj, data, md5=not checked)
        if problem is None:
            return data, crc
        seen.add(problem)
    if len(seen) == 1:
        raise SourceMismatch(
            f"s3://{bucket}/{obj.key} reads back as {seen.pop()} on {READ_ATTEMPTS} reads: "
            "the object does not match its own listing; check the object in the embargo "
            "bucket (re-upload it) before unembargoing this exposure"
        )
    raise SourceChanged(
        f"s3://{bucket}/{obj.key}: {READ_ATTEMPTS} reads disagreed with the listing "
        "and with each other; retrying"
    )


def _get(client: S3Client, bucket: str, obj: S3Object) -> tuple[bytes, bool, int | None]:
    """The object's bytes, whether botocore checked them against S3's checksum, and
    S3's full-object CRC32 of them if that is one it checked."""
    try:
        response = client.get_object(
            Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"', ChecksumMode="ENABLED"
        )
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "412", "NoSuchKey"):
            raise SourceChanged(
                f"s3://{bucket}/{obj.key} changed or vanished since it was listed ({code}); "
                "retrying with a fresh listing"
            ) from None
        raise
    with response["Body"] as body:
        data = body.read()
    checked = s3_checked(response)
    crc = response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-checksum-crc32") if checked else None
    return data, checked, (int.from_bytes(base64.b64decode(crc), "big") if crc and "-" not in crc else None)


def s3_checked(response: dict[str, Any]) -> bool:
    """Whether a GetObject response carries a full-object checksum botocore checks the body
    against (it raises FlexibleChecksumError from ``read`` where they differ)."""
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    values = [headers.get(f"x-amz-checksum-{name}") for name in _CHECKED]
    return any(value and "-" not in value for value in values)


def list_subfolders(client: S3Client, bucket: str, prefix: str) -> list[str]:
    """Names of the folders directly under ``prefix`` (a delimiter listing: one entry per
    folder, not per object), sorted."""
    found: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            found.append(common["Prefix"][len(prefix) :].rstrip("/"))
    return sorted(found)
