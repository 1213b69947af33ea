"""Bucket notifications as Ceph RGW and AWS send them, posted to ``unembargo listen``.

The local stack's moto server does not push notifications, so the seeder plays the
bucket: after uploading an exposure folder it posts one event record per object (as a
Ceph topic does), in the JSON shape of the Ceph "Event record" and AWS "Event message
structure" docs, with the key URL-encoded ('+' for a space).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote_plus

import httpx

from unembargo.adapters.s3 import S3Object, list_folder
from unembargo.devstack.butler_repos import s3_client
from unembargo.models.settings import Settings

SECRET_HEADER = "X-Unembargo-Secret"


def ceph_record(bucket: str, key: str, size: int, etag: str, secret: str) -> dict:
    """One Ceph RGW event record (eventSource ceph:s3; opaqueData is the topic's OpaqueData)."""
    return {
        "eventVersion": "2.2",
        "eventSource": "ceph:s3",
        "awsRegion": "default",
        "eventTime": "2025-12-31T23:00:30.350Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "summit-uploader"},
        "requestParameters": {"sourceIPAddress": ""},
        "responseElements": {"x-amz-request-id": "e5a2e3b2-0000", "x-amz-id-2": "1c2d-default-default"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "rubin-summit-ingest",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "rubin"},
                "arn": f"arn:aws:s3:::{bucket}",
                "id": "c0ffee.1",
            },
            "object": {
                "key": quote_plus(key, safe="/"),
                "size": size,
                "eTag": etag,
                "versionId": "",
                "sequencer": "2E4B6B67C1D0A8F1",
                "metadata": [],
                "tags": [],
            },
        },
        "eventId": "1735686030.350.e5a2e3b2",
        "opaqueData": secret,
    }


def aws_record(bucket: str, key: str, size: int, etag: str) -> dict:
    """One AWS S3 event record: no opaqueData (the secret travels in a header)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-west-2",
        "eventTime": "2025-12-31T23:00:30.350Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.5"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjsk"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "rubin-summit-ingest",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": quote_plus(key, safe="/"),
                "size": size,
                "eTag": etag,
                "sequencer": "0055AED6DC",
            },
        },
    }


def body(*records: dict) -> bytes:
    return json.dumps({"Records": list(records)}).encode()


@dataclass(frozen=True)
class Posted:
    key: str
    status: int
    seconds: float


def folder_objects(settings: Settings, prefix: str) -> list[S3Object]:
    return list_folder(s3_client(settings), settings.s3_bucket, prefix)


def post_objects(
    url: str,
    bucket: str,
    objects: Iterable[S3Object],
    secret: str,
    shape: str = "ceph",
    threads: int = 8,
) -> list[Posted]:
    """POST one notification per object to ``url`` (``/notify``); each answer and its latency."""
    objects = list(objects)

    def one(client: httpx.Client, obj: S3Object) -> Posted:
        if shape == "ceph":
            payload, headers = body(ceph_record(bucket, obj.key, obj.size, obj.etag, secret)), {}
        else:
            payload, headers = body(aws_record(bucket, obj.key, obj.size, obj.etag)), {SECRET_HEADER: secret}
        started = time.monotonic()
        for attempt in range(5):
            try:
                r = client.post(url, content=payload, headers=headers)
            except httpx.TransportError:
                if attempt == 4:
                    raise
                continue
            # 503: busy or Temporal unavailable; a real topic retries too.
            if r.status_code != 503:
                break
            time.sleep(0.2 * (attempt + 1))
        return Posted(obj.key, r.status_code, time.monotonic() - started)

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda o: one(client, o), objects))


def post_folder(settings: Settings, url: str, secret: str, prefix: str, shape: str = "ceph") -> list[Posted]:
    """Notify every object of an exposure folder, raws before their folder's sidecars."""
    objects: Sequence[S3Object] = folder_objects(settings, prefix)
    return post_objects(url, settings.s3_bucket, objects, secret, shape)
