"""``reconcile --verify``'s record and dataset checks (adapters/butler_inventory.py) on a real
SQLite butler, no services: the records asked for many exposures at once are exactly the ones
the export step collects exposure by exposure, the yaml the export step writes matches them,
and a yaml of another exposure or with a changed record is named with what differs; a zip's
butler index against the main butler's datasets: ids missing or extra, another run, another
file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from lsst.daf.butler import Butler, DatasetRef, DatasetType
from lsst.daf.butler.datastore.stored_file_info import SerializedStoredFileInfo
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ArtifactIndexInfo, ZipIndex

from unembargo.adapters.butler import collect_records, write_yaml
from unembargo.adapters.butler_inventory import (
    HeldDataset,
    chunk_records,
    index_differences,
    yaml_differences,
)
from unembargo.adapters.zipping import zip_index
from unembargo.devstack import butler_repos, lsstcam
from unembargo.devstack.seed import _insert_records, exposure_records, plan_exposure
from unembargo.models.exposure import Exposure

DAY = 20251231
DETECTORS = lsstcam.DETECTORS[:6]
RUN = butler_repos.RAW_RUN


@pytest.fixture(scope="module")
def embargo(tmp_path_factory: pytest.TempPathFactory) -> Butler:
    """An embargo-like repo: LSSTCam, three exposures (two on sky with their visits, a bias)."""
    root = tmp_path_factory.mktemp("embargo-repo")
    Butler.makeRepo(str(root))
    butler = Butler.from_config(str(root), writeable=True)
    butler_repos._insert_all(butler, butler_repos._instrument_records())
    for seq, kind in ((10, "science"), (11, "science"), (1, "bias")):
        _insert_records(butler, exposure_records(plan_exposure(DAY, seq, kind), DETECTORS))
    return butler


def exposure(seq: int) -> Exposure:
    plan = plan_exposure(DAY, seq)
    return Exposure("LSSTCam", DAY, plan.obs_id, plan.exposure_id)


def test_records_asked_per_chunk_equal_the_export_steps(embargo: Butler) -> None:
    exps = [exposure(seq) for seq in (10, 11, 1)]
    chunk = chunk_records(embargo, "LSSTCam", [e.exposure_id for e in exps])
    for exp in exps:
        want = collect_records(embargo, exp)
        assert chunk[exp.exposure_id] == want, exp.obs_id
    assert "visit_detector_region" in chunk[exps[0].exposure_id]


def test_the_export_steps_yaml_matches_and_others_are_named(embargo: Butler, tmp_path: Path) -> None:
    one, other = exposure(10), exposure(11)
    chunk = chunk_records(embargo, "LSSTCam", [one.exposure_id, other.exposure_id])
    good, foreign = tmp_path / "good.yaml", tmp_path / "foreign.yaml"
    write_yaml(embargo, collect_records(embargo, one), good)
    write_yaml(embargo, collect_records(embargo, other), foreign)
    assert yaml_differences(good, chunk[one.exposure_id], embargo) == []

    wrong = yaml_differences(foreign, chunk[one.exposure_id], embargo)
    assert "exposure: 1 missing, 1 unexpected" in wrong, wrong
    assert any(w.startswith("visit_detector_region: ") for w in wrong), wrong

    # One value changed by hand: the record is there, but different.
    plan = plan_exposure(DAY, 10)
    changed = tmp_path / "changed.yaml"
    text = good.read_text()
    assert f"obs_id: {plan.obs_id}" in text
    changed.write_text(text.replace(f"target_name: {plan.target_name}", "target_name: elsewhere", 1))
    assert yaml_differences(changed, chunk[one.exposure_id], embargo) == ["exposure: 1 different"]

    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed")
    [problem] = yaml_differences(broken, chunk[one.exposure_id], embargo)
    assert problem.startswith("not a readable dimension yaml")


def _zip_with_index(embargo: Butler, path: Path, exp: Exposure, detectors: list[int]) -> list[DatasetRef]:
    """A zip of ``detectors``' raws of ``exp`` with its butler index, as the zip step writes one."""
    raw = DatasetType(
        "raw", butler_repos.RAW_DIMENSIONS, butler_repos.RAW_STORAGE_CLASS, universe=embargo.dimensions
    )
    refs = [
        DatasetRef(raw, {"instrument": "LSSTCam", "exposure": exp.exposure_id, "detector": d}, RUN)
        for d in detectors
    ]
    raws = {
        f"{exp.obs_id}_{d}.fits": ArtifactIndexInfo.from_single(
            SerializedStoredFileInfo(
                formatter="unembargo.devstack.formatter.SyntheticRawFormatter", path=f"{exp.obs_id}_{d}.fits",
                storage_class=butler_repos.RAW_STORAGE_CLASS, component=None, checksum=None, file_size=4,
            ),
            ref.id,
        )
        for d, ref in zip(detectors, refs, strict=True)
    }  # fmt: skip
    index = zip_index(refs, raws)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(ZipIndex.index_name, index.model_dump_json(exclude_unset=False, exclude_defaults=False))
        for name in raws:
            zf.writestr(name, b"FITS")
    return refs


def test_the_main_butlers_datasets_against_the_zips_index(embargo: Butler, tmp_path: Path) -> None:
    exp = exposure(10)
    path = tmp_path / f"{exp.obs_id}.zip"
    refs = _zip_with_index(embargo, path, exp, [0, 1, 2])
    at = str(path.resolve())

    def held(ref: DatasetRef, run: str = RUN, where: str = at) -> tuple[str, HeldDataset]:
        member = f"{exp.obs_id}_{ref.dataId['detector']}.fits"
        return str(ref.id), HeldDataset("raw", run, member, where)

    assert index_differences(path, dict(map(held, refs))) == []
    missing = dict(map(held, refs[1:]))
    assert index_differences(path, missing) == [
        f"1 dataset(s) of the zip's index are not in the main butler ({refs[0].id})"
    ]
    stray = "0e6b3c1a-0000-4000-8000-000000000000"
    extra = {**dict(map(held, refs)), stray: held(refs[0])[1]}
    assert index_differences(path, extra) == [
        f"the main butler holds 1 dataset(s) of it that the zip's index lacks ({stray})"
    ]
    other_run = dict([held(refs[0], run="LSSTCam/raw/other"), *map(held, refs[1:])])
    assert index_differences(path, other_run) == [
        f"1 dataset(s) have another type or run in the main butler ({refs[0].id})"
    ]
    elsewhere = dict([held(refs[0], where="/elsewhere/x.zip"), *map(held, refs[1:])])
    assert index_differences(path, elsewhere) == [
        f"1 dataset(s) of the main butler point at another file (e.g. /elsewhere/x.zip#{exp.obs_id}_0.fits)"
    ]
