"""The local stack's two Data Butler repositories, created if missing.

The embargo repo mirrors the summit's: SQLite registry on local disk, datastore
root in the embargo bucket (raws themselves are ingested in place, "direct").
The main repo is the destination, all local. Both use the default dimension
universe. Everything here is idempotent: running it again changes nothing.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from lsst.daf.butler import Butler, Config, DatasetType
from lsst.resources import ResourcePath

from unembargo.devstack import lsstcam, s3, skymap
from unembargo.models.settings import Settings

RAW = "raw"
GUIDER_RAW = "guider_raw"
RAW_RUN = f"{lsstcam.INSTRUMENT}/raw/all"
GUIDER_RUN = f"{lsstcam.INSTRUMENT}/raw/guider"
RAW_DIMENSIONS = ("instrument", "detector", "exposure")
# Storage classes the real registries use; daf_butler knows them by name.
RAW_STORAGE_CLASS = "Exposure"
GUIDER_STORAGE_CLASS = "Stamps"


def use_s3_endpoint(settings: Settings) -> None:
    """Point lsst-resources at the configured S3 endpoint (it reads only the environment)."""
    if settings.s3_endpoint_url:
        os.environ["S3_ENDPOINT_URL"] = settings.s3_endpoint_url


# boto3 clients are generated at run time; no type stubs are installed.
S3Client = Any


def s3_client(settings: Settings, pool: int = 32) -> S3Client:
    """A boto3 S3 client for the configured endpoint, sized for parallel uploads."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        config=BotoConfig(max_pool_connections=pool, retries={"mode": "standard", "max_attempts": 5}),
    )


def datastore_root(settings: Settings) -> str:
    """S3 root of the embargo repo's datastore (raws live outside it, ingested direct)."""
    return f"s3://{settings.s3_bucket}/{settings.s3_prefix}butler/"


def _exists(root: str) -> bool:
    return ResourcePath(root, forceDirectory=True).join("butler.yaml").exists()


def _make_embargo_repo(settings: Settings) -> None:
    config = Config({"datastore": {"root": datastore_root(settings)}})
    # forceConfigRoot=False keeps the datastore root in S3 instead of the repo dir.
    Butler.makeRepo(settings.embargo_butler, config=config, forceConfigRoot=False)


def raw_dataset_types(butler: Butler) -> tuple[DatasetType, DatasetType]:
    """The ``raw`` and ``guider_raw`` dataset types, as real LSSTCam registries define them."""
    universe = butler.dimensions
    return (
        DatasetType(RAW, RAW_DIMENSIONS, RAW_STORAGE_CLASS, universe=universe),
        DatasetType(GUIDER_RAW, RAW_DIMENSIONS, GUIDER_STORAGE_CLASS, universe=universe),
    )


def _instrument_records() -> dict[str, list[dict[str, object]]]:
    """Instrument, filters, detectors and visit systems of LSSTCam, by element."""
    name = lsstcam.INSTRUMENT
    return {
        "instrument": [
            {
                "name": name,
                "visit_max": lsstcam.VISIT_MAX,
                "visit_system": lsstcam.DEFAULT_VISIT_SYSTEM,
                "exposure_max": lsstcam.EXPOSURE_MAX,
                "detector_max": lsstcam.DETECTOR_MAX,
                "class_name": lsstcam.INSTRUMENT_CLASS,
            }
        ],
        "physical_filter": [
            {"instrument": name, "name": f, "band": band} for f, band in lsstcam.FILTERS.items()
        ],
        "detector": [
            {
                "instrument": name,
                "id": d.id,
                "full_name": d.full_name,
                "name_in_raft": d.name_in_raft,
                "raft": d.raft,
                "purpose": d.purpose,
            }
            for d in lsstcam.DETECTORS
        ],
        "visit_system": [{"instrument": name, "id": i, "name": n} for i, n in lsstcam.VISIT_SYSTEMS.items()],
    }


def _skymap_records() -> dict[str, list[dict[str, object]]]:
    """The skymap record and every registered tract, with its region."""
    return {
        "skymap": [
            {
                "name": skymap.SKYMAP,
                "hash": skymap.skymap_hash(),
                "tract_max": skymap.tract_max(),
                "patch_nx_max": skymap.PATCHES_PER_SIDE,
                "patch_ny_max": skymap.PATCHES_PER_SIDE,
            }
        ],
        "tract": [{"skymap": skymap.SKYMAP, "id": t.id, "region": t.region} for t in skymap.covered_tracts()],
    }


def _insert_all(butler: Butler, records: dict[str, list[dict[str, object]]]) -> None:
    for element, rows in records.items():
        butler.registry.insertDimensionData(element, *rows, skip_existing=True)


def _register_raw_types(butler: Butler) -> None:
    for dataset_type in raw_dataset_types(butler):
        butler.registry.registerDatasetType(dataset_type)


def _populate_embargo(butler: Butler) -> None:
    _insert_all(butler, _instrument_records())
    _insert_all(butler, _skymap_records())
    _register_raw_types(butler)
    for run in (RAW_RUN, GUIDER_RUN):
        butler.collections.register(run)  # a RUN collection


def _populate_main(butler: Butler) -> None:
    """What a real destination repo has before any exposure arrives: the instrument."""
    _insert_all(butler, _instrument_records())
    _register_raw_types(butler)


def ensure_repos(settings: Settings) -> None:
    """Create and populate the embargo and main butler repos unless they already are."""
    use_s3_endpoint(settings)
    s3.ensure_bucket(settings)
    if not _exists(settings.embargo_butler):
        _make_embargo_repo(settings)
    if not _exists(settings.main_butler):
        Butler.makeRepo(settings.main_butler)
    with Butler.from_config(settings.embargo_butler, writeable=True) as butler:
        _populate_embargo(butler)
    with Butler.from_config(settings.main_butler, writeable=True) as butler:
        _populate_main(butler)
