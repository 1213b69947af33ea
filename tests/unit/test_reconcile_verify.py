"""``reconcile --verify``'s yaml check (adapters/butler_inventory.py) on a real SQLite butler,
no services: the records asked for many exposures at once are exactly the ones the export
step collects exposure by exposure, the yaml the export step writes matches them, and a
yaml of another exposure or with a changed record is named with what differs."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsst.daf.butler import Butler

from unembargo.adapters.butler import collect_records, write_yaml
from unembargo.adapters.butler_inventory import chunk_records, yaml_differences
from unembargo.devstack import butler_repos, lsstcam
from unembargo.devstack.seed import _insert_records, exposure_records, plan_exposure
from unembargo.models.exposure import Exposure

DAY = 20251231
DETECTORS = lsstcam.DETECTORS[:6]


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
