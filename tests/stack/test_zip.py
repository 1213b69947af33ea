"""The zip step against the test stack's real S3 endpoint and real butler repos.

The module has a bucket, repos, destination and ledger of its own and seeds
exposures with the dev stack's seeder. Each test uses its own exposure (its own
seq_num), so tests are independent.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from astro_metadata_translator.indexing import process_index_data
from lsst.daf.butler import Butler
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

from support import SMALL, seed_small
from unembargo.activities.context import Resources
from unembargo.activities.zip import ZipActivities
from unembargo.adapters import destination
from unembargo.adapters.headers import METADATA_INDEX
from unembargo.adapters.s3 import S3Object, SourceChanged, list_folder, read_checked, read_verified
from unembargo.adapters.zipping import (
    BUTLER_INDEX,
)
from unembargo.devstack import lsstcam
from unembargo.devstack.butler_repos import GUIDER_RAW
from unembargo.devstack.lsstcam import DETECTORS, INSTRUMENT
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models import names
from unembargo.models.errors import (
    DestinationConflict,
    IncompleteExposure,
    SourceMismatch,
    UnsafeKey,
)
from unembargo.models.exposure import Exposure, StepInput, ZipReceipt
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect

DAY_OBS = 20251231
FILE_SIZE = 8 * 1024
ODD_OBJECTS = {"notes/run log (1).txt": b"shutter ok\n", "ünïcødé ✓ name.json": b'{"ok": true}'}


@pytest.fixture(scope="module")
def resources(module_settings: Settings) -> Resources:
    return Resources(module_settings)


def _exposure(seeded: SeededExposure) -> Exposure:
    return Exposure(INSTRUMENT, seeded.day_obs, seeded.obs_id, seeded.exposure_id)


def _run(resources: Resources, exposure: Exposure, beats: list[object] | None = None) -> ZipReceipt:
    """Call the activity as a worker would, inside an activity context."""
    env = ActivityEnvironment()
    if beats is not None:
        env.on_heartbeat = lambda *details: beats.append(details)
    return env.run(ZipActivities(resources).zip_exposure, StepInput(exposure))


def _final(settings: Settings, exposure: Exposure) -> Path:
    return settings.dest_root / names.zip_relpath(exposure.instrument, exposure.day_obs, exposure.obs_id)


def _listing(settings: Settings, seeded: SeededExposure) -> dict[str, S3Object]:
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    return {o.key[len(seeded.prefix) :]: o for o in list_folder(client, settings.s3_bucket, seeded.prefix)}


def _leftovers(final: Path) -> list[str]:
    """Anything under the final name or a staging name of it."""
    if not final.parent.exists():
        return []
    return sorted(
        p.name for p in final.parent.iterdir() if p.name.startswith((final.name, f".{final.name}."))
    )


def _installs(resources: Resources, obs_id: str) -> int:
    with Session(resources.engine) as session:
        rows = session.exec(select(Effect).where(Effect.obs_id == obs_id, Effect.step == "zip"))
        return sum(1 for row in rows if row.action == "install")


@dataclass(frozen=True)
class Zipped:
    seeded: SeededExposure
    exposure: Exposure
    final: Path
    stale: Path
    receipt: ZipReceipt
    # Details of the progress heartbeats, in order.
    progress: list[str]


@pytest.fixture(scope="module")
def zipped(module_settings: Settings, resources: Resources) -> Zipped:
    """A complete exposure (guiders as guider_raw, odd extra keys) zipped once."""
    seeded = seed_exposure(
        module_settings,
        DAY_OBS,
        10,
        guiders_as=GUIDER_RAW,
        extra_objects=ODD_OBJECTS,
        file_size=FILE_SIZE,
    )
    exposure = _exposure(seeded)
    final = _final(module_settings, exposure)
    final.parent.mkdir(parents=True, exist_ok=True)
    stale = final.with_name(f".{final.name}.deadbeef0000.partial")
    stale.write_bytes(b"left by a crashed attempt")
    beats: list[object] = []
    receipt = _run(resources, exposure, beats)
    # Progress beats carry a detail; the side thread's periodic ones (every 5 s) do not.
    progress = [str(details[0]) for details in beats if isinstance(details, tuple) and details]
    return Zipped(seeded, exposure, final, stale, receipt, progress)


# ---------------------------------------------------------------- happy path


def test_zip_matches_listing(resources: Resources, module_settings: Settings, zipped: Zipped) -> None:
    """The real zip step against real S3 writes every object of the folder (FITS stored, sidecars
    DEFLATEd) with the listing's sizes and md5s, progress heartbeats, one install."""
    listing = _listing(module_settings, zipped.seeded)
    with zipfile.ZipFile(zipped.final) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        assert set(infos) == set(listing) | {BUTLER_INDEX, METADATA_INDEX}
        for name, obj in listing.items():
            assert infos[name].file_size == obj.size
            fits = name.endswith(".fits")
            assert infos[name].compress_type == (zipfile.ZIP_STORED if fits else zipfile.ZIP_DEFLATED)
            assert hashlib.md5(zf.read(name)).hexdigest() == obj.etag
    receipt = zipped.receipt
    size, md5, adler32 = destination.checksums(zipped.final)
    assert receipt.file.relpath == names.zip_relpath(INSTRUMENT, DAY_OBS, zipped.exposure.obs_id)
    assert (receipt.file.size, receipt.file.md5, receipt.file.adler32) == (size, md5, adler32)
    assert receipt.members == len(listing) + 2
    assert receipt.raws == zipped.seeded.raws + zipped.seeded.guider_raws == 205
    assert not receipt.already_done
    # Progress from the first member on, at most one beat a second (not one per member).
    written = [int(detail.split("/")[0]) for detail in zipped.progress]
    assert zipped.progress[0] == f"1/{len(listing)} members written"
    assert written == sorted(set(written)) and written[-1] <= len(listing)
    assert len(written) < len(listing)
    assert _installs(resources, zipped.exposure.obs_id) == 1


def test_odd_keys_are_zipped_under_their_names(zipped: Zipped) -> None:
    """Objects with spaces and unicode in their keys are zipped under their names."""
    with zipfile.ZipFile(zipped.final) as zf:
        for name, body in ODD_OBJECTS.items():
            assert zf.read(name) == body


def test_stale_staging_removed(zipped: Zipped) -> None:
    """A staging file left by a crashed attempt is removed; only the final zip remains."""
    assert not zipped.stale.exists()
    assert _leftovers(zipped.final) == [zipped.final.name]


def test_metadata_index_has_every_raw_header(zipped: Zipped) -> None:
    """The zip's metadata index holds every raw's header, one per butler dataset."""
    with zipfile.ZipFile(zipped.final) as zf:
        # force_dict: each file's merged header as a plain mapping (no translation).
        index = cast(
            dict[str, dict[str, Any]],
            process_index_data(json.loads(zf.read(METADATA_INDEX)), force_dict=True),
        )
        butler_index = json.loads(zf.read(BUTLER_INDEX))
    assert set(index) == set(butler_index["artifact_map"])
    assert len(index) == 205
    detectors = {header["DETNAME"] for header in index.values()}
    assert detectors == {d.full_name for d in DETECTORS}
    assert {header["OBSID"] for header in index.values()} == {zipped.exposure.obs_id}


def test_ingest_zip_into_empty_repo(zipped: Zipped, tmp_path: Path) -> None:
    """The zip alone (transfer_dimensions) fills an empty repo of the same universe."""
    Butler.makeRepo(str(tmp_path / "repo"))
    with Butler.from_config(str(tmp_path / "repo"), writeable=True) as butler:
        butler.ingest_zip(str(zipped.final), transfer="direct", transfer_dimensions=True)
        refs = [
            *butler.query_datasets("raw", collections="*", find_first=False),
            *butler.query_datasets(GUIDER_RAW, collections="*", find_first=False),
        ]
        assert len(refs) == 205
        uris = {butler.getURI(ref) for ref in refs}
        data_id = {"instrument": INSTRUMENT, "exposure": zipped.exposure.exposure_id}
        exposures = butler.query_dimension_records("exposure", data_id=data_id)
    members = {uri.fragment.removeprefix("zip-path=") for uri in uris}
    with zipfile.ZipFile(zipped.final) as zf:
        assert members <= set(zf.namelist())
    assert {uri.replace(fragment="").ospath for uri in uris} == {str(zipped.final.resolve())}
    assert [record.obs_id for record in exposures] == [zipped.exposure.obs_id]


def test_second_call_is_already_done(resources: Resources, module_settings: Settings, zipped: Zipped) -> None:
    """A second zip call is already done and leaves the file as it is (same inode, mtime)."""
    before = zipped.final.stat()
    again = _run(resources, zipped.exposure)
    after = zipped.final.stat()
    assert again.already_done
    assert replace(again, already_done=False) == zipped.receipt
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert _installs(resources, zipped.exposure.obs_id) == 1


def test_zip_stays_done_when_the_embargo_copy_is_gone(
    module_settings: Settings, zipped: Zipped, tmp_path: Path
) -> None:
    """With an empty folder the zip is judged on its own: CRCs, indexes, the right exposure."""
    purged = module_settings.model_copy(update={"s3_prefix": "purged/", "dest_root": tmp_path / "raw"})
    resources = Resources(purged)
    final = _final(purged, zipped.exposure)
    final.parent.mkdir(parents=True)
    shutil.copyfile(zipped.final, final)
    receipt = _run(resources, zipped.exposure)
    assert receipt.already_done
    assert (receipt.file.md5, receipt.raws) == (zipped.receipt.file.md5, 205)
    other = Exposure(INSTRUMENT, DAY_OBS, lsstcam.obs_id(DAY_OBS, 41), lsstcam.exposure_id(DAY_OBS, 41))
    shutil.copyfile(zipped.final, _final(purged, other))
    with pytest.raises(
        DestinationConflict,
        match=f"belongs to another exposure: its _butler_zip_index.json lists LSSTCam exposure "
        f"{zipped.exposure.exposure_id}",
    ):
        _run(resources, other)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", ["garbage", "other zip"])
def test_existing_zip_with_other_content_is_a_conflict(
    resources: Resources, module_settings: Settings, zipped: Zipped, kind: str
) -> None:
    """A file of other content under the final name is DestinationConflict, left untouched."""
    seq = {"garbage": 11, "other zip": 12}[kind]
    seeded = seed_exposure(module_settings, DAY_OBS, seq, detectors=[0, 1, 2], file_size=FILE_SIZE)
    exposure = _exposure(seeded)
    final = _final(module_settings, exposure)
    final.parent.mkdir(parents=True, exist_ok=True)
    content = b"not a zip at all" if kind == "garbage" else zipped.final.read_bytes()
    final.write_bytes(content)
    stat = final.stat()
    with pytest.raises(DestinationConflict, match=str(final)):
        _run(resources, exposure)
    assert final.read_bytes() == content
    assert (final.stat().st_ino, final.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert _leftovers(final) == [final.name]


def test_incomplete_exposure_is_not_zipped_until_its_raws_arrive(
    resources: Resources, module_settings: Settings
) -> None:
    """The real step against real S3 and the embargo butler: IncompleteExposure, nothing written,
    while raws are missing; once they are in, the next call (a fresh listing) zips them all.
    (The workflow's durable wait between the calls: tests/unit/test_exposure_workflow.py.)"""
    exposure = _exposure(seed_exposure(module_settings, DAY_OBS, 13, detectors=range(5), file_size=FILE_SIZE))
    with pytest.raises(IncompleteExposure, match="found 5 of 205") as err:
        _run(resources, exposure)
    assert "R01_S12" in str(err.value)
    assert _leftovers(_final(module_settings, exposure)) == []

    # The raws arriving: a small exposure (its expectedSensors lists three), one raw late.
    late = seed_exposure(
        module_settings, DAY_OBS, 15, detectors=SMALL[:2], expected=SMALL, file_size=FILE_SIZE
    )
    with pytest.raises(IncompleteExposure, match="found 2 of 3"):
        _run(resources, _exposure(late))
    complete = seed_small(module_settings, DAY_OBS, 15, file_size=FILE_SIZE)
    receipt = _run(resources, _exposure(complete))
    assert (receipt.raws, receipt.already_done) == (len(SMALL), False)
    final = _final(module_settings, _exposure(complete))
    assert _leftovers(final) == [final.name]


def test_expected_sensors_missing_or_malformed(resources: Resources, module_settings: Settings) -> None:
    """A missing expectedSensors file is IncompleteExposure (may still arrive); a malformed one is
    SourceMismatch."""
    seeded = seed_exposure(module_settings, DAY_OBS, 14, detectors=[0], file_size=FILE_SIZE)
    exposure = _exposure(seeded)
    client = boto3.client("s3", endpoint_url=module_settings.s3_endpoint_url)
    key = seeded.prefix + names.expected_sensors_name(seeded.obs_id)
    client.delete_object(Bucket=module_settings.s3_bucket, Key=key)
    with pytest.raises(IncompleteExposure, match="may still arrive"):
        _run(resources, exposure)
    client.put_object(Bucket=module_settings.s3_bucket, Key=key, Body=b"[not json")
    with pytest.raises(SourceMismatch, match="not an expectedSensors file"):
        _run(resources, exposure)
    assert _leftovers(_final(module_settings, exposure)) == []


# Keys whose relative part could escape the folder or clash with an index, by seq_num.
UNSAFE_KEYS = {
    20: "../escape.txt",
    21: "a/../../b",
    22: "./dot",
    23: "a//b",
    24: "back\\slash",
    25: BUTLER_INDEX,
}


@pytest.mark.parametrize(("seq", "name"), sorted(UNSAFE_KEYS.items()))
def test_unsafe_key_refuses_the_exposure(
    resources: Resources, module_settings: Settings, seq: int, name: str
) -> None:
    """An object key that could escape the folder or clash with an index refuses the exposure; nothing is
    written."""
    seeded = seed_exposure(module_settings, DAY_OBS, seq, detectors=[0], file_size=FILE_SIZE)
    client = boto3.client("s3", endpoint_url=module_settings.s3_endpoint_url)
    client.put_object(Bucket=module_settings.s3_bucket, Key=seeded.prefix + name, Body=b"x")
    with pytest.raises(UnsafeKey, match="nothing was written"):
        _run(resources, _exposure(seeded))
    assert _leftovers(_final(module_settings, _exposure(seeded))) == []


def test_truncated_object_is_named(resources: Resources, module_settings: Settings) -> None:
    """A raw shorter in the bucket than the butler says is SourceMismatch naming it."""
    seeded = seed_exposure(module_settings, DAY_OBS, 16, detectors=[0, 1], file_size=FILE_SIZE)
    client = boto3.client("s3", endpoint_url=module_settings.s3_endpoint_url)
    key = f"{seeded.prefix}{seeded.obs_id}_{DETECTORS[1].full_name}.fits"
    whole = client.get_object(Bucket=module_settings.s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=module_settings.s3_bucket, Key=key, Body=whole[:4096])
    with pytest.raises(SourceMismatch, match=rf"{DETECTORS[1].full_name}\.fits is 4096 bytes in the bucket"):
        _run(resources, _exposure(seeded))
    assert _leftovers(_final(module_settings, _exposure(seeded))) == []


# ---------------------------------------------------------------- pieces


def test_reads_are_checked_against_the_listing(module_settings: Settings, zipped: Zipped) -> None:
    """Reads from real S3 are checked against the listing: a replaced object is transient, a size that
    never matches is SourceMismatch."""
    client = boto3.client("s3", endpoint_url=module_settings.s3_endpoint_url)
    obj = _listing(module_settings, zipped.seeded)[names.expected_sensors_name(zipped.exposure.obs_id)]
    assert hashlib.md5(read_verified(client, module_settings.s3_bucket, obj)).hexdigest() == obj.etag
    # Replaced since listed (the ETag no longer matches): transient, retried with a new listing.
    with pytest.raises(SourceChanged):
        read_verified(client, module_settings.s3_bucket, replace(obj, etag="0" * 32))
    # Same object, but the listing's size disagrees on every read: the source is bad.
    with pytest.raises(SourceMismatch, match="reads back as"):
        read_verified(client, module_settings.s3_bucket, replace(obj, size=obj.size + 1))


def test_reads_are_checked_by_the_s3_checksum_else_the_md5(
    resources: Resources, module_settings: Settings, zipped: Zipped
) -> None:
    """Each read asks for S3's checksum: an object with a full-object CRC32 (boto3's default) is
    checked by it and its CRC-32 handed on for the zip; one without (a multipart upload's composite
    checksum) by its bytes alone, or its md5 where the ETag is one."""
    client, bucket = resources.s3, module_settings.s3_bucket
    key = "multipart-upload/part.bin"
    body = b"multipart " * 1000
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    plain = _listing(module_settings, zipped.seeded)[names.expected_sensors_name(zipped.exposure.obs_id)]
    [multipart] = list_folder(client, bucket, key)
    assert plain.md5 is not None and multipart.md5 is None
    modes: list[str | None] = []

    def sent(request: Any, **_: Any) -> None:
        modes.append(request.headers.get("x-amz-checksum-mode"))

    client.meta.events.register("before-send.s3.GetObject", sent)
    try:
        data, crc = read_checked(client, bucket, plain)
        assert crc == zlib.crc32(data) and hashlib.md5(data).hexdigest() == plain.etag
        assert read_checked(client, bucket, multipart) == (body, None)
    finally:
        client.meta.events.unregister("before-send.s3.GetObject", sent)
        client.delete_object(Bucket=bucket, Key=key)
    assert [m.decode() if isinstance(m, bytes) else m for m in modes] == ["ENABLED", "ENABLED"]
