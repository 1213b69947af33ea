"""Step 1, zip: an exposure's embargo folder as one zip at the destination.

The folder is in the embargo bucket, or on a disk when the embargo butler's raws of the
exposure are ``file://`` URIs: the raws say where, so one exposure is never read from
both (``disk_folder_of``).

``<dest_root>/<instrument>/<day_obs>/<obs_id>.zip`` holds every object of the
exposure's folder (raws, guider raws, sidecars, expectedSensors, anything else),
under its key relative to the folder, plus ``_butler_zip_index.json`` (so
``Butler.ingest_zip`` takes it as it is) and ``_metadata_index.json`` (the raws'
headers). Done when that file exists and matches the folder's listing: member
names, sizes and checksums (as each object is read, S3's own CRC32 of it, else the
ETag where it is an md5; for a zip already there, the md5 where the ETag is one).

The zip streams to a staging file beside the final name while objects download
in parallel (each checked by S3's CRC32 or its md5 in the download threads), is
checksummed (md5, adler32) in the thread that writes it, and is installed with a hard link
that never replaces anything. A crash at any instant leaves either nothing under
the final name or the complete, verified zip.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from lsst.daf.butler import (
    DatasetRef,
)
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import (
    ArtifactIndexInfo,
    ZipIndex,
)
from temporalio import activity

from unembargo.activities.context import Progress, Resources, checkpoint, heartbeating
from unembargo.adapters import destination
from unembargo.adapters.disk_source import list_disk_folder, with_md5
from unembargo.adapters.headers import METADATA_INDEX, metadata_index
from unembargo.adapters.s3 import list_folder
from unembargo.adapters.zipping import (
    BUTLER_INDEX,
    INDEX_NAMES,
    Folder,
    Member,
    WriteBehind,
    add_member,
    artifact_uris,
    artifacts_by_member,
    detector_name,
    differences_text,
    disk_folder_of,
    fetch_member,
    folder_members,
    in_order,
    names_text,
    parse_expected_sensors,
    raw_refs,
    verify_zip,
    zip_index,
)
from unembargo.models import names
from unembargo.models.errors import (
    RERUN,
    DestinationConflict,
    IncompleteExposure,
    MissingExposure,
    SourceMismatch,
)
from unembargo.models.exposure import STEPS, Exposure, FileReceipt, Step, StepInput, ZipReceipt


class ZipActivities:
    """The zip step; one instance per worker, sharing the worker's clients."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    @activity.defn(name=STEPS[Step.ZIP].activity)
    def zip_exposure(self, inp: StepInput) -> ZipReceipt:
        """Zip the exposure's folder unless its zip already exists and matches it."""
        # Listing and butler queries come before the first member's heartbeat.
        with heartbeating():
            return self._zip(inp)

    def _zip(self, inp: StepInput) -> ZipReceipt:
        exp = inp.exposure
        relpath = names.zip_relpath(exp.instrument, exp.day_obs, exp.obs_id)
        final = self.resources.dest_path(relpath)
        destination.remove_stale_staging(final)
        folder = self._list(exp)
        if final.exists():
            return self._existing(exp, final, relpath, folder)
        if not folder.members:
            raise MissingExposure(
                f"{exp.obs_id}: {folder.url} is empty; nothing to zip. Check the exposure "
                f"id and that its files reached {folder.where}."
            )
        refs, raws = self._raws(exp, folder)
        self._check_complete(exp, folder, refs)
        return self._build(exp, relpath, final, folder, zip_index(refs, raws))

    def _list(self, exp: Exposure) -> Folder:
        """The exposure's folder, where its raws are: on disk if the butler says so, else S3."""
        settings = self.resources.settings
        on_disk = self._disk_folder(exp)
        if on_disk is not None:
            root, prefix = on_disk
            folder = Folder(settings.s3_bucket, prefix, members={}, root=root)
            objects = list_disk_folder(root, prefix)
        else:
            prefix = names.exposure_prefix(settings.s3_prefix, exp.instrument, exp.day_obs, exp.obs_id)
            folder = Folder(settings.s3_bucket, prefix, members={})
            objects = list_folder(self.resources.s3, settings.s3_bucket, prefix)
        folder.members.update(folder_members(folder, objects))
        return folder

    def _disk_folder(self, exp: Exposure) -> tuple[Path, str] | None:
        """The disk root and folder of the exposure's raws, or None for S3 (also when the
        butler has none of them yet: the folder is then listed, and found, as before)."""
        butler = self.resources.embargo_butler()
        try:
            refs = raw_refs(butler, exp)
        except (MissingExposure, SourceMismatch):
            return None  # said again, with the folder listed, by the step that needs the raws
        return disk_folder_of(artifact_uris(butler, refs), exp, self.resources.settings.s3_bucket)

    def _existing(self, exp: Exposure, final: Path, relpath: str, folder: Folder) -> ZipReceipt:
        """Receipt of a zip already in place if it matches the folder, else a conflict."""
        members = folder.members if folder.root is None else with_md5(folder.root, folder.members)
        check = verify_zip(final, members, exp, Progress().beat)
        if check.foreign:
            raise DestinationConflict(
                f"{final} belongs to another exposure: its {BUTLER_INDEX} lists {check.foreign}, "
                f"not {exp.instrument} exposure {exp.exposure_id} ({exp.obs_id}). It was left untouched. "
                "Find where that exposure's zip should be (a misnamed or misplaced file); move this "
                f"one aside (check Rucio and the main butler first), then {RERUN}."
            )
        if check.differences:
            raise DestinationConflict(
                f"{final} exists but does not match {folder.url}: {differences_text(check.differences)}. "
                f"It was left untouched. Compare it with {folder.storage}; if the zip is wrong, "
                "move it aside (check Rucio and the main butler first), then "
                f"{RERUN}."
            )
        if not folder.members:
            activity.logger.warning(
                "%s: %s is empty; accepting the existing zip on its own indexes and CRCs",
                relpath,
                folder.url,
            )
        file = destination.receipt(self.resources.settings.dest_root.resolve(), final)
        return ZipReceipt(file=file, members=check.members, raws=check.raws, already_done=True)

    def _raws(self, exp: Exposure, folder: Folder) -> tuple[list[DatasetRef], dict[str, ArtifactIndexInfo]]:
        """The exposure's raw datasets and their files, each file a member of the folder."""
        butler = self.resources.embargo_butler()
        refs = raw_refs(butler, exp)
        raws = artifacts_by_member(butler, refs, folder)
        return refs, raws

    def _check_complete(self, exp: Exposure, folder: Folder, refs: list[DatasetRef]) -> None:
        """IncompleteExposure unless every expected sensor has a raw in the butler."""
        name = names.expected_sensors_name(exp.obs_id)
        obj = folder.members.get(name)
        if obj is None:
            raise IncompleteExposure(
                f"{exp.obs_id}: no {name} in {folder.url} yet (found {len(refs)} raws); "
                "it may still arrive. If it never will, the exposure cannot be zipped."
            )
        expected = parse_expected_sensors(name, folder.read(self.resources.s3, obj))
        present = {detector_name(ref) for ref in refs}
        missing = sorted(expected - present)
        if missing:
            raise IncompleteExposure(
                f"{exp.obs_id}: found {len(expected) - len(missing)} of {len(expected)} expected "
                f"sensors in the embargo butler; missing {names_text(missing)}. Nothing was zipped; "
                "the exposure is zipped once every expected raw is ingested."
            )
        if not refs:
            raise MissingExposure(
                f"{exp.obs_id}: no raws in the embargo butler and {name} expects none; nothing to unembargo."
            )

    def _build(self, exp: Exposure, relpath: str, final: Path, folder: Folder, index: ZipIndex) -> ZipReceipt:
        """Stream the zip to a staging file, install it under its final name."""
        started = time.monotonic()
        members = [
            Member(name, obj, raw=name in index.artifact_map) for name, obj in sorted(folder.members.items())
        ]
        count = len(members) + len(INDEX_NAMES)
        stamp = max(obj.last_modified for obj in folder.members.values())
        with destination.staged(final) as (raw_file, staging):
            # adler32 as the bytes are written, md5 in a thread of its own.
            sums = destination.ChecksumWriter(raw_file, md5=False)
            md5 = hashlib.md5(usedforsecurity=False)
            with WriteBehind(sums, md5.update) as behind:
                self._write(behind, members, index, stamp, folder)
                behind.flush()
            file = FileReceipt(relpath=relpath, size=sums.size, md5=md5.hexdigest(), adler32=sums.adler32)
            self.resources.record(exp, Step.ZIP, "install")
            installed = destination.install(staging, final)
        if not installed:
            # Another attempt installed first: fine if it holds the same content.
            return self._existing(exp, final, relpath, folder)
        checkpoint(Step.ZIP, "acted")
        activity.logger.info(
            "zipped %s: %d members, %d bytes in %.1f s", relpath, count, file.size, time.monotonic() - started
        )
        return ZipReceipt(file=file, members=count, raws=len(index.refs), already_done=False)

    def _write(
        self,
        out: WriteBehind,
        members: list[Member],
        index: ZipIndex,
        stamp: datetime,
        folder: Folder,
    ) -> None:
        """Butler index first, then the members in name order, then the header index."""
        s3 = self.resources.s3
        headers: dict[str, dict[str, Any]] = {}
        progress = Progress()
        with zipfile.ZipFile(out, "w") as zf:
            add_member(zf, BUTLER_INDEX, index.model_dump_json().encode(), stamp)
            fetched = in_order(lambda m: fetch_member(s3, folder, m), members)
            with closing(fetched):
                for done, (member, got) in enumerate(fetched, start=1):
                    add_member(zf, member.name, got.data, member.obj.last_modified, got.crc32)
                    if got.header is not None:
                        headers[member.name] = got.header
                    if done == 1:
                        checkpoint(Step.ZIP, "acting")
                    progress.beat(f"{done}/{len(members)} members written")
            add_member(zf, METADATA_INDEX, metadata_index(headers), stamp)
