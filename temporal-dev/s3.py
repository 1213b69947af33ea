"""The S3 endpoint of the local stack: moto's server, with the embargo bucket."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path

from unembargo.adapters.s3 import LOOPBACK_KEYS
from unembargo.devstack import procs
from unembargo.models.settings import Settings, host_port

NAME = "s3"

# moto accepts any key: the loopback keys of adapters/s3.py.
LOCAL_ENV = LOOPBACK_KEYS


def address(settings: Settings) -> str:
    return f"{settings.s3_endpoint_url} (bucket {settings.s3_bucket})"


def health(settings: Settings) -> tuple[bool, str]:
    """Up when the endpoint answers HTTP."""
    if settings.s3_endpoint_url is None:
        return False, "no endpoint configured"
    try:
        with urllib.request.urlopen(settings.s3_endpoint_url, timeout=2):
            return True, "answering"
    except OSError as exc:
        return False, f"not answering ({exc.__class__.__name__})"


def ensure(settings: Settings) -> str:
    """Start moto's server unless the endpoint answers; make the bucket; idempotent."""
    action = "already up"
    if not health(settings)[0]:
        assert settings.s3_endpoint_url is not None
        host, port = host_port(settings.s3_endpoint_url)
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        procs.start(settings.state_dir, NAME, [moto, "-H", host, "-p", str(port)])
        procs.poll(lambda: health(settings)[0], 30, "the S3 endpoint")
        action = "started"
    ensure_bucket(settings)
    return action


def ensure_bucket(settings: Settings) -> None:
    """Create the embargo bucket if missing."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if settings.s3_bucket not in existing:
        s3.create_bucket(Bucket=settings.s3_bucket)


def stop(settings: Settings) -> bool:
    return procs.stop(settings.state_dir, NAME)
