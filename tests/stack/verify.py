"""Independent checks of each step's "done when" (design.md), for the tests.

Written against the contract, not the code under test: paths and DIDs are spelled
out here from design.md, and every fact is read back from the real systems
(the zip file, an empty butler repo, the main butler, Rucio).
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
import zlib
from pathlib import Path

import boto3
from lsst.daf.butler import Butler

from unembargo.adapters.rucio_client import connect as rucio_connect
from unembargo.models.settings import Settings

INDEXES = {"_butler_zip_index.json", "_metadata_index.json"}


def _file_checksums(path: Path) -> tuple[int, str, str]:
    data = path.read_bytes()
    return len(data), hashlib.md5(data).hexdigest(), f"{zlib.adler32(data):08x}"


def check_zip(settings: Settings, day_obs: int, obs_id: str) -> Path:
    """Step 1: the zip holds exactly the folder's objects, same sizes and md5."""
    zip_path = settings.dest_root / "LSSTCam" / str(day_obs) / f"{obs_id}.zip"
    assert zip_path.is_file(), f"no zip at {zip_path}"
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    prefix = f"{settings.s3_prefix}LSSTCam/{day_obs}/{obs_id}/"
    listing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            # A zero-byte "folder marker" (key = the prefix itself) is no member.
            if obj["Key"] != prefix or obj["Size"]:
                listing[obj["Key"][len(prefix) :]] = (obj["Size"], obj["ETag"].strip('"'))
    with zipfile.ZipFile(zip_path) as zf:
        members = {info.filename: info for info in zf.infolist()}
        assert set(members) - INDEXES == set(listing), "zip members differ from the bucket listing"
        assert INDEXES <= set(members)
        for name, (size, etag) in listing.items():
            assert members[name].file_size == size, name
            assert hashlib.md5(zf.read(name)).hexdigest() == etag, name
    return zip_path


def check_yaml_imports_into_empty_repo(settings: Settings, day_obs: int, obs_id: str) -> Path:
    """Step 2: the yaml alone populates an EMPTY repo of the same universe."""
    yaml_path = settings.dest_root / "LSSTCam" / str(day_obs) / f"{obs_id}_dimensions.yaml"
    assert yaml_path.is_file(), f"no yaml at {yaml_path}"
    source = Butler.from_config(settings.embargo_butler)
    with tempfile.TemporaryDirectory() as tmp:
        config = Butler.makeRepo(tmp, dimensionConfig=source.dimensions.dimensionConfig)
        with Butler.from_config(config, writeable=True) as empty:
            empty.import_(filename=str(yaml_path))
            found = list(
                empty.query_dimension_records(
                    "exposure", instrument="LSSTCam", where=f"exposure.obs_id = '{obs_id}'"
                )
            )
    assert len(found) == 1, f"exposure {obs_id} not in the imported yaml"
    return yaml_path


def check_ingested(settings: Settings, exposure_id: int) -> int:
    """Step 3: the main butler returns every dataset the embargo butler has for the exposure."""
    embargo = Butler.from_config(settings.embargo_butler)
    main = Butler.from_config(settings.main_butler)
    wanted = set()
    for dataset_type in embargo.registry.queryDatasetTypes(["raw", "guider_raw"]):
        refs = embargo.query_datasets(
            dataset_type,
            collections="*",
            find_first=False,
            instrument="LSSTCam",
            exposure=exposure_id,
            explain=False,
        )
        wanted |= {ref.id for ref in refs}
    assert wanted, "nothing to compare: the embargo butler has no raws"
    missing = [i for i in wanted if main.get_dataset(i) is None]
    assert not missing, f"main butler lacks {len(missing)} of {len(wanted)} datasets"
    return len(wanted)


def check_rucio(settings: Settings, day_obs: int, obs_id: str, tracts: list[int]) -> None:
    """Steps 4 and 5: both files with the right checksums under every dataset; Obs closed and tagged."""
    client = rucio_connect(settings)
    scope = settings.rucio_scope
    folder = settings.dest_root / "LSSTCam" / str(day_obs)
    files = {f"LSSTCam/{day_obs}/{obs_id}.zip": folder / f"{obs_id}.zip",
             f"LSSTCam/{day_obs}/{obs_id}_dimensions.yaml": folder / f"{obs_id}_dimensions.yaml"}  # fmt: skip
    for name, path in files.items():
        size, md5, adler = _file_checksums(path)
        did = client.get_did(scope, name)
        assert (did["bytes"], did["md5"], did["adler32"]) == (size, md5, adler), name
        replicas = list(client.list_replicas([{"scope": scope, "name": name}], schemes=["file"]))
        pfns = [p for r in replicas for p in r["pfns"]]
        assert any(Path(p.removeprefix("file://")) == path.resolve() for p in pfns), pfns
    datasets = [f"Dataset/LSSTCam/raw/Obs/{day_obs}/{obs_id}"] + (
        [f"Dataset/LSSTCam/raw/Tract{t}/{day_obs}" for t in tracts]
        or [f"Dataset/LSSTCam/raw/NoTract/{day_obs}"]
    )
    for dataset in datasets:
        content = {c["name"] for c in client.list_content(scope, dataset)}
        assert set(files) <= content, f"{dataset} lacks {set(files) - content}"
    obs = datasets[0]
    assert client.get_metadata(scope, obs, plugin="JSON").get("arcBackup") == "SLAC_RAW_DISK_BKUP:need"
    assert client.get_did(scope, obs)["open"] is False


def check_unembargoed(
    settings: Settings, day_obs: int, obs_id: str, exposure_id: int, tracts: list[int]
) -> None:
    """Every step's "done when", in order."""
    check_zip(settings, day_obs, obs_id)
    check_yaml_imports_into_empty_repo(settings, day_obs, obs_id)
    check_ingested(settings, exposure_id)
    check_rucio(settings, day_obs, obs_id, tracts)
