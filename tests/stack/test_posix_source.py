"""An embargo butler whose datastore and raws are on a POSIX disk, on the real stack: the zip
step reads the exposure's folder from the disk its raws' ``file://`` URIs name (nothing of it
is in the bucket), and the exposure is unembargoed end to end; a raw truncated or missing on
disk is a SourceMismatch and nothing is written."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from lsst.daf.butler import Butler, DataCoordinate, DatasetIdGenEnum, DatasetRef, FileDataset
from lsst.resources import ResourcePath
from sqlmodel import Session
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from conftest import isolate
from support import SMALL, WorkerProcess, add_locations, fresh_day
from unembargo.activities.context import Resources
from unembargo.activities.zip import ZipActivities
from unembargo.devstack import lsstcam, skymap
from unembargo.devstack.butler_repos import RAW_RUN, raw_dataset_types
from unembargo.devstack.formatter import SyntheticRawFormatter
from unembargo.devstack.seed import (
    _exposure_cards,
    expected_sensors,
    exposure_records,
    plan_exposure,
    raw_file,
)
from unembargo.engine.starter import start_exposures
from unembargo.models import names
from unembargo.models.errors import SourceMismatch
from unembargo.models.exposure import Exposure, Policy, StepInput
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, step_queues
from verify import INDEXES, check_ingested, check_rucio, check_yaml_imports_into_empty_repo

FILE_SIZE = 8 * 1024
EXTRA = {"notes/run log (1).txt": b"shutter ok\n"}


@dataclass(frozen=True)
class DiskExposure:
    exposure: Exposure
    folder: Path
    raws: dict[int, Path]
    tracts: list[int]


@pytest.fixture(scope="module")
def posix(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Isolated settings whose embargo repo has the default (POSIX) file datastore."""
    root = tmp_path_factory.mktemp("posix")
    Butler.makeRepo(str(root / "butler" / "embargo"))  # isolate populates the existing repo
    return isolate(settings, root)


@pytest.fixture(scope="module")
def worker(posix: Settings) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(posix, add_locations(posix, "posix"))
    yield proc
    proc.stop()


def seed_on_disk(settings: Settings, disk: Path, seq_num: int) -> DiskExposure:
    """A small complete exposure's folder on ``disk``, its raws ingested in place ("direct")."""
    day = fresh_day()
    plan = plan_exposure(day, seq_num)
    folder = disk / names.exposure_prefix("", lsstcam.INSTRUMENT, day, plan.obs_id)
    dets = lsstcam.detectors_by_id(list(SMALL))
    files = {names.expected_sensors_name(plan.obs_id): expected_sensors(plan, dets), **EXTRA}
    raws = {}
    for det in dets:
        data, sidecar = raw_file(plan, det, FILE_SIZE, _exposure_cards(plan))
        files[f"{plan.obs_id}_{det.full_name}.fits"], files[f"{plan.obs_id}_{det.full_name}.json"] = (
            data,
            sidecar,
        )
        raws[det.id] = folder / f"{plan.obs_id}_{det.full_name}.fits"
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)
    with Butler.from_config(settings.embargo_butler, writeable=True) as butler:
        for element, rows in exposure_records(plan, dets).items():
            butler.registry.insertDimensionData(element, *rows, skip_existing=True)
        raw_type, _ = raw_dataset_types(butler)
        datasets = []
        for det in dets:
            data_id = DataCoordinate.standardize(
                instrument=lsstcam.INSTRUMENT, detector=det.id, exposure=plan.exposure_id,
                dimensions=raw_type.dimensions,
            )  # fmt: skip
            ref = DatasetRef(raw_type, data_id, RAW_RUN, id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN)
            datasets.append(
                FileDataset(path=ResourcePath(raws[det.id]), refs=[ref], formatter=SyntheticRawFormatter)
            )
        butler.ingest(*datasets, transfer="direct")
        assert all(butler.getURI(d.refs[0]).scheme == "file" for d in datasets)
    exposure = Exposure(lsstcam.INSTRUMENT, day, plan.obs_id, plan.exposure_id)
    region = plan.region()
    tracts = [] if region is None else list(skymap.overlapping_tracts(region))
    return DiskExposure(exposure, folder, raws, tracts)


def check_zip_of_disk(settings: Settings, exp: DiskExposure) -> None:
    """The zip holds exactly the disk folder's files, same sizes and md5s; the bucket none."""
    exposure = exp.exposure
    zip_path = settings.dest_root / names.zip_relpath(exposure.instrument, exposure.day_obs, exposure.obs_id)
    files = {
        p.relative_to(exp.folder).as_posix(): p.read_bytes() for p in exp.folder.rglob("*") if p.is_file()
    }
    with zipfile.ZipFile(zip_path) as zf:
        assert set(zf.namelist()) - INDEXES == set(files)
        for name, body in files.items():
            assert hashlib.md5(zf.read(name)).digest() == hashlib.md5(body).digest(), name
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    prefix = names.exposure_prefix(settings.s3_prefix, exposure.instrument, exposure.day_obs, exposure.obs_id)
    assert s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix).get("KeyCount") == 0


async def test_an_exposure_on_a_posix_datastore_is_unembargoed(
    posix: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    """Zip (from disk), export, ingest, register, tag: every step's "done when" holds."""
    exp = seed_on_disk(posix, tmp_path / "embargo", 1)
    client = await Client.connect(posix.temporal_address, namespace=posix.temporal_namespace)
    with Session(connect(posix.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    [out] = await start_exposures(
        client, posix.workflow_task_queue, [exp.exposure], queues, Policy(heartbeat_s=10)
    )
    assert out.outcome == "started", out
    await client.get_workflow_handle(out.workflow_id).result()

    check_zip_of_disk(posix, exp)
    e = exp.exposure
    check_yaml_imports_into_empty_repo(posix, e.day_obs, e.obs_id)
    check_ingested(posix, e.exposure_id)
    check_rucio(posix, e.day_obs, e.obs_id, exp.tracts)
    # Run again, the existing zip is checked against the disk (md5s read from it) and kept.
    receipt = ActivityEnvironment().run(ZipActivities(Resources(posix)).zip_exposure, StepInput(e))
    assert receipt.already_done


def test_a_raw_truncated_or_missing_on_disk_is_a_source_mismatch(posix: Settings, tmp_path: Path) -> None:
    """The butler's size and the disk's disagree, or the file is gone: named, nothing written."""
    exp = seed_on_disk(posix, tmp_path / "embargo", 2)
    e = exp.exposure
    final = posix.dest_root / names.zip_relpath(e.instrument, e.day_obs, e.obs_id)
    zip_step = ZipActivities(Resources(posix)).zip_exposure
    science, guider = exp.raws[SMALL[0]], exp.raws[SMALL[1]]
    body = science.read_bytes()
    science.write_bytes(body[:-2880])
    with pytest.raises(
        SourceMismatch, match=rf"{science.name} is {len(body) - 2880} bytes in the disk but {len(body)}"
    ):
        ActivityEnvironment().run(zip_step, StepInput(e))
    science.write_bytes(body)
    shutil.move(guider, tmp_path / guider.name)
    with pytest.raises(SourceMismatch, match=rf"{guider.name}, which is not a file of file://"):
        ActivityEnvironment().run(zip_step, StepInput(e))
    assert not final.parent.exists() or not any(final.parent.iterdir())
