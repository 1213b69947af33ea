"""The CCAT flow's three sites on one machine: the telescope (a SOURCE and two BUFFERs, as
folders) and two archive sites (a BUFFER folder and a LONG_TERM_ARCHIVE each, a moto bucket
or a folder), written as data locations.

    >>> import tempfile
    >>> from sqlmodel import Session
    >>> from unembargo.models.tables import connect
    >>> with Session(connect("sqlite://")) as s:
    ...     sites = add_sites(s, Path(tempfile.mkdtemp()), tag="x")
    >>> sites.source, sites.buffers, [a.archive for a in sites.archives]
    ('tel-source-x', ['tel-buffer-1-x', 'tel-buffer-2-x'], ['cgn-lta-x', 'crn-lta-x'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from unembargo.models.locations import DataLocation, LocationType, StorageType, upsert_location


@dataclass(frozen=True)
class ArchiveSiteNames:
    site: str
    buffer: str
    archive: str
    # The archive's bucket (S3) or folder (DISK).
    where: str


@dataclass(frozen=True)
class CcatSites:
    """Location names of one set of sites (a tag keeps test sessions apart)."""

    telescope: str
    source: str
    buffers: list[str]
    archives: list[ArchiveSiteNames]
    processing: str
    root: Path

    def all(self) -> list[str]:
        return [self.source, *self.buffers, *(n for a in self.archives for n in (a.buffer, a.archive)),
                self.processing]  # fmt: skip


def add_sites(session: Session, root: Path, tag: str = "local", s3_endpoint: str | None = None) -> CcatSites:
    """Write the sites' locations (folders under ``root``; archives in buckets of ``s3_endpoint``
    when given, else folders); idempotent. The folders are made, the buckets are not."""
    telescope = f"ccat-telescope-{tag}"

    def disk(name: str, site: str, short: str, type: LocationType, priority: int = 0) -> str:
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        upsert_location(
            session,
            DataLocation(name=name, site=site, type=type, storage=StorageType.DISK, path=str(path),
                         priority=priority),
            short_name=short,
        )  # fmt: skip
        return name

    source = disk(f"tel-source-{tag}", telescope, f"tel-{tag}", LocationType.SOURCE)
    buffers = [
        disk(f"tel-buffer-1-{tag}", telescope, f"tel-{tag}", LocationType.BUFFER, priority=0),
        disk(f"tel-buffer-2-{tag}", telescope, f"tel-{tag}", LocationType.BUFFER, priority=10),
    ]
    archives = []
    for short in ("cgn", "crn"):
        site = f"ccat-{short}-{tag}"
        buffer = disk(f"{short}-buffer-{tag}", site, f"{short}-{tag}", LocationType.BUFFER)
        archive = f"{short}-lta-{tag}"
        if s3_endpoint is None:
            disk(archive, site, f"{short}-{tag}", LocationType.LONG_TERM_ARCHIVE)
            where = str(root / archive)
        else:
            where = f"ccat-{short}-lta-{tag}".lower()
            upsert_location(
                session,
                DataLocation(name=archive, site=site, type=LocationType.LONG_TERM_ARCHIVE,
                             storage=StorageType.S3, endpoint=s3_endpoint, bucket=where, prefix="ccat/"),
                short_name=f"{short}-{tag}",
            )  # fmt: skip
        archives.append(ArchiveSiteNames(site, buffer, archive, where))
    processing = disk(f"cgn-proc-{tag}", archives[0].site, f"cgn-{tag}", LocationType.PROCESSING)
    return CcatSites(telescope, source, buffers, archives, processing, root)


def make_buckets(sites: CcatSites, s3_endpoint: str) -> None:
    """The archives' buckets, if missing."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for a in sites.archives:
        if a.where not in existing:
            s3.create_bucket(Bucket=a.where)
