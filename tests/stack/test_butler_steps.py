"""The export and ingest steps, and exposure selection, against real butler repos.

The test stack's S3 holds the module's own embargo bucket; exposures are seeded into a real
embargo butler (records, visits, tracts, raws ingested "direct" from S3); the zip
is made once by the zip step; each test gets its own destination root, main
butler and ledger. Activities run inside Temporal's ActivityEnvironment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from lsst.daf.butler import (
    Butler,
    DataCoordinate,
    DatasetIdGenEnum,
    DatasetRef,
    FileDataset,
    MissingCollectionError,
    MissingDatasetTypeError,
)
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ZipIndex
from lsst.daf.butler.transfers import _yaml as butler_yaml
from lsst.resources import ResourcePath
from pydantic import SecretStr
from sqlmodel import Session, func, select
from temporalio.testing import ActivityEnvironment

from unembargo.activities.butler import ButlerActivities
from unembargo.activities.context import Resources
from unembargo.activities.zip import ZipActivities
from unembargo.adapters import destination
from unembargo.adapters.butler import collect_records, write_yaml, yaml_problems
from unembargo.adapters.selection import select_exposures
from unembargo.devstack import lsstcam
from unembargo.devstack.butler_repos import GUIDER_RAW, GUIDER_RUN, RAW, RAW_RUN
from unembargo.devstack.formatter import SyntheticRawFormatter
from unembargo.devstack.seed import SeededExposure, exposure_records, plan_exposure, seed_exposure
from unembargo.models import names
from unembargo.models.errors import DatasetConflict, DestinationConflict, DimensionRecordConflict
from unembargo.models.exposure import (
    ExportReceipt,
    Exposure,
    FileReceipt,
    IngestInput,
    IngestReceipt,
    StepInput,
)
from unembargo.models.settings import EmbargoRule, Settings
from unembargo.models.tables import Effect

# The rules in force when nothing is configured: calibrations 0 h, everything else 80 h.
DEFAULT_RULES = Settings().rules()

DAY = 20251231
INSTRUMENT = lsstcam.INSTRUMENT
LOOKBACK = timedelta(days=30)
EMBARGO = timedelta(hours=80)
# An exposure recorded without can_see_sky, later than any "now" of the other tests.
NULL_DAY = 20260110
# Calibrations and the off-tract visit need only a few raws.
FEW = [0, 1, 190]


@dataclass
class Embargo:
    """The seeded embargo side, shared by the module's tests."""

    settings: Settings
    bias: SeededExposure
    dark: SeededExposure
    science: SeededExposure
    off_tract: SeededExposure
    # The science exposure's zip, made once by the zip step; each test links it into its own root.
    zip_path: Path


@dataclass
class Steps:
    """One test's destination root, main butler, ledger and activities."""

    settings: Settings
    resources: Resources
    acts: ButlerActivities
    exposure: Exposure
    zip: FileReceipt

    def export(self, exp: Exposure | None = None) -> ExportReceipt:
        return ActivityEnvironment().run(self.acts.export_dimensions, StepInput(exp or self.exposure))

    def ingest(self) -> IngestReceipt:
        return ActivityEnvironment().run(self.acts.ingest_zip, IngestInput(self.exposure, self.zip))

    def yaml_path(self, exp: Exposure | None = None) -> Path:
        e = exp or self.exposure
        return self.resources.dest_path(names.yaml_relpath(e.instrument, e.day_obs, e.obs_id))

    def effects(self, step: str, action: str) -> int:
        with Session(self.resources.engine) as session:
            query = select(func.count()).where(Effect.step == step, Effect.action == action)
            return int(session.exec(query).one())


def _exposure(seeded: SeededExposure) -> Exposure:
    return Exposure(INSTRUMENT, seeded.day_obs, seeded.obs_id, seeded.exposure_id)


@pytest.fixture(scope="module")
def embargo(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Embargo:
    """A bucket and embargo repo of this module's own, four seeded exposures and one zip."""
    settings = module_settings
    science = seed_exposure(settings, DAY, 3, guiders_as=GUIDER_RAW)
    return Embargo(
        settings=settings,
        bias=seed_exposure(settings, DAY, 1, observation_type="bias", detectors=FEW),
        dark=seed_exposure(settings, DAY, 2, observation_type="dark", detectors=FEW),
        science=science,
        off_tract=seed_exposure(settings, DAY, 4, on_tract=False, detectors=FEW),
        zip_path=_make_zip(settings, science, tmp_path_factory.mktemp("zips") / "raw"),
    )


def _make_zip(settings: Settings, exp: SeededExposure, where: Path) -> Path:
    """The exposure's zip, made by the zip step itself under its own destination root."""
    where.mkdir(parents=True)  # "mounted": the step refuses a missing destination root
    zips = settings.model_copy(
        update={
            "dest_root": where,
            "database_url": SecretStr(f"sqlite:///{where / 'zip-ledger.db'}"),
        }
    )
    receipt = ActivityEnvironment().run(
        ZipActivities(Resources(zips)).zip_exposure, StepInput(_exposure(exp))
    )
    return where / receipt.file.relpath


@pytest.fixture
def steps(embargo: Embargo, tmp_path: Path) -> Steps:
    """Fresh destination root (holding the zip), empty main butler and ledger."""
    settings = embargo.settings.model_copy(
        update={
            "dest_root": tmp_path / "dest" / "raw",
            "main_butler": str(tmp_path / "main"),
            # model_copy does not validate: pass the SecretStr the field holds.
            "database_url": SecretStr(f"sqlite:///{tmp_path / 'unembargo.db'}"),
        }
    )
    Butler.makeRepo(settings.main_butler)
    settings.dest_root.mkdir(parents=True)  # "mounted"
    resources = Resources(settings)
    exp = _exposure(embargo.science)
    zip_final = resources.dest_path(names.zip_relpath(INSTRUMENT, exp.day_obs, exp.obs_id))
    zip_final.parent.mkdir(parents=True)
    os.link(embargo.zip_path, zip_final)
    receipt = destination.receipt(settings.dest_root.resolve(), zip_final)
    return Steps(settings, resources, ButlerActivities(resources), exp, receipt)


def _index_ids(path: Path) -> set[uuid.UUID]:
    index = ZipIndex.from_zip_file(ResourcePath(path))
    return {ref_id for info in index.artifact_map.values() for ref_id in info.ids}


def _main_ids(settings: Settings, exp: Exposure) -> set[uuid.UUID]:
    """Ids of the exposure's raws and guider raws the main butler returns."""
    ids: set[uuid.UUID] = set()
    with Butler.from_config(settings.main_butler) as main:
        for dataset_type, run in ((RAW, RAW_RUN), (GUIDER_RAW, GUIDER_RUN)):
            try:
                refs = main.query_datasets(
                    dataset_type,
                    collections=run,
                    instrument=INSTRUMENT,
                    exposure=exp.exposure_id,
                    explain=False,
                )
            except (MissingCollectionError, MissingDatasetTypeError):
                continue
            ids.update(ref.id for ref in refs)
    return ids


# ---------------------------------------------------------------- export


def test_export_yaml_imports_into_an_empty_repo_and_holds_the_exposure(
    steps: Steps, embargo: Embargo
) -> None:
    """The real export step's yaml alone fills an empty repo with the exposure's records, visit and
    regions, and the zip ingests on them."""
    receipt = steps.export()
    path = steps.yaml_path()
    assert not receipt.already_done
    assert receipt.file.relpath == names.yaml_relpath(INSTRUMENT, DAY, steps.exposure.obs_id)
    assert receipt.file.size == path.stat().st_size
    assert receipt.tracts == sorted(embargo.science.tracts) and receipt.tracts
    assert steps.effects("export", "install") == 1
    with tempfile.TemporaryDirectory() as tmp:
        Butler.makeRepo(tmp)
        with (
            Butler.from_config(tmp, writeable=True) as empty,
            Butler.from_config(embargo.settings.embargo_butler) as source,
        ):
            empty.import_(filename=str(path), format="yaml")
            eid = steps.exposure.exposure_id
            [ours] = empty.query_dimension_records("exposure", instrument=INSTRUMENT, exposure=eid)
            [theirs] = source.query_dimension_records("exposure", instrument=INSTRUMENT, exposure=eid)
            assert ours == theirs
            assert len(empty.query_dimension_records("detector", instrument=INSTRUMENT)) == 205
            [visit] = empty.query_dimension_records("visit", instrument=INSTRUMENT, visit=eid)
            assert visit.region is not None
            regions = empty.query_dimension_records("visit_detector_region", instrument=INSTRUMENT, visit=eid)
            assert len(regions) == 205
            systems = empty.query_dimension_records(
                "visit_system_membership", instrument=INSTRUMENT, visit=eid
            )
            assert {s.visit_system for s in systems} == {0, 2}
            # Self-sufficient for the zip too: its datasets ingest on these records alone.
            refs = ZipIndex.from_zip_file(ResourcePath(steps.settings.dest_root / steps.zip.relpath))
            for ref in refs.refs.to_refs(universe=empty.dimensions):
                empty.registry.registerDatasetType(ref.datasetType)
            empty.ingest_zip(str(steps.settings.dest_root / steps.zip.relpath), transfer="direct")
            assert len(empty.query_datasets(RAW, collections=RAW_RUN, explain=False)) == 197
            assert len(empty.query_datasets(GUIDER_RAW, collections=GUIDER_RUN, explain=False)) == 8


def test_second_export_is_already_done_and_leaves_the_file_alone(steps: Steps) -> None:
    """A second export finds its yaml done and leaves the file as it is (check-first)."""
    first = steps.export()
    path = steps.yaml_path()
    before = path.stat()
    second = steps.export()
    after = path.stat()
    assert second.already_done and second.file == first.file and second.records == first.records
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert steps.effects("export", "install") == 1
    assert not list(path.parent.glob(".*.partial"))


def test_existing_yaml_of_another_exposure_is_a_destination_conflict(steps: Steps, embargo: Embargo) -> None:
    """A yaml of another exposure under the final name is DestinationConflict, left untouched."""
    other = _exposure(embargo.off_tract)
    steps.export(other)
    path = steps.yaml_path()
    shutil.copyfile(steps.yaml_path(other), path)
    content = path.read_bytes()
    with pytest.raises(Exception) as raised:
        steps.export()
    assert isinstance(raised.value, DestinationConflict)
    assert "exposure: 1 missing, 1 unexpected" in str(raised.value)
    assert path.read_bytes() == content
    assert steps.effects("export", "install") == 1


def test_existing_yaml_that_does_not_import_is_a_destination_conflict(steps: Steps) -> None:
    """A yaml that does not import into an empty real repo is DestinationConflict, left untouched."""
    path = steps.yaml_path()
    path.write_text("not: a butler export\n")
    with pytest.raises(DestinationConflict, match="does not import into an empty repo"):
        steps.export()
    assert path.read_text() == "not: a butler export\n"


def test_export_yaml_written_by_libyaml_reads_back_the_same_with_stock_pyyaml(
    steps: Steps, embargo: Embargo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Others read the yaml with stock daf_butler (pure-Python PyYAML): same records."""
    steps.export()
    ours = steps.yaml_path()
    stock = tmp_path / "stock.yaml"
    monkeypatch.setattr(butler_yaml, "yaml", yaml)
    with Butler.from_config(embargo.settings.embargo_butler) as source:
        records = collect_records(source, steps.exposure)
        write_yaml(source, records, stock)
        assert yaml_problems(ours, records, source.dimensions) == []
    # Written by the other emitter: the step really went through libyaml.
    assert ours.read_bytes() != stock.read_bytes()


def test_existing_yaml_written_by_stock_pyyaml_is_already_done(
    steps: Steps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A yaml installed by a version without libyaml is this exposure's: not redone."""
    with monkeypatch.context() as stock:
        stock.setattr(butler_yaml, "yaml", yaml)
        first = steps.export()
    content = steps.yaml_path().read_bytes()
    second = steps.export()
    assert second.already_done and second.file == first.file
    assert steps.yaml_path().read_bytes() == content
    assert steps.effects("export", "install") == 1


def test_exposures_without_tracts_report_none(steps: Steps, embargo: Embargo) -> None:
    """Off-tract visits and calibrations export with no tracts (their files go to NoTract)."""
    off = steps.export(_exposure(embargo.off_tract))
    bias = steps.export(_exposure(embargo.bias))
    assert off.tracts == [] and bias.tracts == []
    # A calibration has no visit: exposure, detectors and what they need only.
    assert bias.records < off.records


# ---------------------------------------------------------------- ingest


def test_ingest_then_main_returns_every_dataset_and_second_is_already_done(steps: Steps) -> None:
    """The real ingest step puts every dataset of the zip in the main butler, in place; a second call is
    already done."""
    steps.export()
    first = steps.ingest()
    wanted = _index_ids(steps.settings.dest_root / steps.zip.relpath)
    assert not first.already_done and first.datasets == len(wanted) == 205
    assert _main_ids(steps.settings, steps.exposure) == wanted
    with Butler.from_config(steps.settings.main_butler) as main:
        ref = main.get_dataset(next(iter(wanted)))
        assert ref is not None and main.getURI(ref).geturl().startswith("file://")
        [visit] = main.query_dimension_records(
            "visit", instrument=INSTRUMENT, visit=steps.exposure.exposure_id
        )
        assert visit.region is not None
    second = steps.ingest()
    assert second.already_done and second.datasets == 205
    assert _main_ids(steps.settings, steps.exposure) == wanted
    assert steps.effects("ingest", "ingest_zip") == 1


def _prepare_main(steps: Steps) -> Butler:
    """The main butler with the exposure's records and the raw types, but no datasets."""
    steps.export()
    main = Butler.from_config(steps.settings.main_butler, writeable=True)
    main.import_(filename=str(steps.yaml_path()), format="yaml")
    with Butler.from_config(steps.settings.embargo_butler) as embargo:
        for name in (RAW, GUIDER_RAW):
            main.registry.registerDatasetType(embargo.get_dataset_type(name))
    main.collections.register(RAW_RUN)
    return main


def _ingest_one(main: Butler, tmp: Path, ref: DatasetRef) -> None:
    path = tmp / f"{ref.id}.fits"
    path.write_bytes(b"SIMPLE")
    main.ingest(FileDataset(path=str(path), refs=[ref], formatter=SyntheticRawFormatter), transfer="copy")


def test_same_data_id_under_another_id_is_a_dataset_conflict(steps: Steps, tmp_path: Path) -> None:
    """A main butler holding a data ID under another dataset id makes ingest DatasetConflict, nothing
    ingested."""
    with _prepare_main(steps) as main:
        raw = main.get_dataset_type(RAW)
        data_id = DataCoordinate.standardize(
            instrument=INSTRUMENT,
            exposure=steps.exposure.exposure_id,
            detector=7,
            dimensions=raw.dimensions,
        )
        # A random id: the main butler got this data ID from somewhere else.
        ref = DatasetRef(raw, data_id, RAW_RUN, id_generation_mode=DatasetIdGenEnum.UNIQUE)
        _ingest_one(main, tmp_path, ref)
    with pytest.raises(DatasetConflict, match="under other dataset ids") as raised:
        steps.ingest()
    assert str(ref.id) in str(raised.value)
    assert _main_ids(steps.settings, steps.exposure) == {ref.id}
    assert steps.effects("ingest", "ingest_zip") == 0


def test_zip_partly_in_main_is_a_dataset_conflict(steps: Steps, tmp_path: Path) -> None:
    """A zip partly in the main butler already is DatasetConflict, not half ingested again."""
    with _prepare_main(steps) as main:
        index = ZipIndex.from_zip_file(ResourcePath(steps.settings.dest_root / steps.zip.relpath))
        ref = next(r for r in index.refs.to_refs(universe=main.dimensions) if r.datasetType.name == RAW)
        _ingest_one(main, tmp_path, ref)
    with pytest.raises(DatasetConflict, match="already holds 1 of the 205"):
        steps.ingest()
    assert _main_ids(steps.settings, steps.exposure) == {ref.id}


def test_differing_exposure_record_is_a_dimension_record_conflict(steps: Steps) -> None:
    """A main-butler exposure record that differs from the embargo one is DimensionRecordConflict naming
    the fields."""
    with _prepare_main(steps) as main:
        eid = steps.exposure.exposure_id
        [record] = main.query_dimension_records("exposure", instrument=INSTRUMENT, exposure=eid)
        changed = {**record.toDict(), "observation_type": "dark", "exposure_time": 1.0}
        main.registry.syncDimensionData("exposure", changed, update=True)
    with pytest.raises(DimensionRecordConflict) as raised:
        steps.ingest()
    message = str(raised.value)
    assert "observation_type (main 'dark', embargo 'science')" in message
    assert "exposure_time (main 1.0, embargo 30.0)" in message
    assert _main_ids(steps.settings, steps.exposure) == set()
    assert steps.effects("ingest", "ingest_zip") == 0


# ---------------------------------------------------------------- selection


@pytest.fixture
def embargo_butler(embargo: Embargo) -> Iterator[Butler]:
    with Butler.from_config(embargo.settings.embargo_butler) as butler:
        yield butler


def _select(butler: Butler, now: datetime, **kwargs: Any) -> list[str]:
    kwargs.setdefault("rules", DEFAULT_RULES)
    kwargs.setdefault("lookback", LOOKBACK)
    return [e.obs_id for e in select_exposures(butler, INSTRUMENT, now=now, **kwargs)]


def _obs_ids(*exposures: SeededExposure) -> list[str]:
    return [e.obs_id for e in exposures]


def test_calibrations_are_due_at_once_others_after_the_embargo(
    embargo: Embargo, embargo_butler: Butler
) -> None:
    """Selection on the real embargo butler: the default rules make calibrations due at once, on-sky
    exposures after 80 h."""
    e = embargo
    # A minute after the dark, calibrations are due; the science exposures, just as
    # recent, wait 80 h (default rules: NOT exposure.can_see_sky -> 0, else 80 h).
    assert _select(embargo_butler, e.off_tract.end + timedelta(minutes=1)) == _obs_ids(e.bias, e.dark)
    later = e.off_tract.end + EMBARGO + timedelta(minutes=1)
    assert _select(embargo_butler, later) == _obs_ids(e.bias, e.dark, e.science, e.off_tract)


def test_selection_returns_exposures_with_their_keys(embargo: Embargo, embargo_butler: Butler) -> None:
    """Selection returns each due exposure with its business key, in order."""
    now = embargo.off_tract.end + EMBARGO
    found = select_exposures(embargo_butler, INSTRUMENT, DEFAULT_RULES, now, LOOKBACK, day_obs=DAY)
    assert found == [_exposure(e) for e in (embargo.bias, embargo.dark, embargo.science, embargo.off_tract)]


def test_first_matching_rule_wins(embargo: Embargo, embargo_butler: Butler) -> None:
    # Science waits 80 h although the catch-all rule after it says 0.
    """Embargo rules are tried in order and the first match decides."""
    rules = [
        EmbargoRule(where="exposure.observation_type = 'science'", period=EMBARGO),
        EmbargoRule(where="", period=timedelta(0)),
    ]
    now = embargo.off_tract.end + timedelta(minutes=1)
    assert _select(embargo_butler, now, rules=rules) == _obs_ids(embargo.bias, embargo.dark)


def test_window_is_one_period_for_every_exposure(embargo: Embargo, embargo_butler: Butler) -> None:
    """A window overrides the rules with one period for every exposure."""
    e = embargo
    soon = e.off_tract.end + timedelta(minutes=1)
    assert _select(embargo_butler, soon, window=timedelta(0)) == _obs_ids(
        e.bias, e.dark, e.science, e.off_tract
    )
    # The calibrations' 0 h rule no longer applies either.
    assert _select(embargo_butler, soon, window=EMBARGO) == []


def test_lookback_ignores_exposures_that_ended_earlier(embargo: Embargo, embargo_butler: Butler) -> None:
    """The lookback bounds the butler query by exposure end time."""
    e = embargo
    now = e.science.end + EMBARGO + timedelta(minutes=1)
    # The window starts a minute before the science exposure ended: the dark
    # (30 s earlier) is in, the bias (70 s earlier) is not.
    lookback = EMBARGO + timedelta(minutes=2)
    assert _select(embargo_butler, now, lookback=lookback) == _obs_ids(e.dark, e.science, e.off_tract)


def test_day_obs_filter(embargo: Embargo, embargo_butler: Butler) -> None:
    """A day_obs filter selects that day's exposures only."""
    now = embargo.off_tract.end + EMBARGO
    assert len(_select(embargo_butler, now, day_obs=DAY)) == 4
    assert _select(embargo_butler, now, day_obs=DAY - 1) == []


def test_unknown_can_see_sky_gets_the_full_embargo(embargo: Embargo) -> None:
    """NULL can_see_sky matches neither NOT nor its negation; the catch-all rule must still see it."""
    plan = plan_exposure(NULL_DAY, 1)
    records = exposure_records(plan, [])
    records["exposure"][0]["can_see_sky"] = None
    with Butler.from_config(embargo.settings.embargo_butler, writeable=True) as butler:
        for element in ("day_obs", "group", "exposure"):
            butler.registry.insertDimensionData(element, *records[element], skip_existing=True)
        assert _select(butler, plan.end + timedelta(minutes=1), day_obs=NULL_DAY) == []
        assert _select(butler, plan.end + EMBARGO, day_obs=NULL_DAY) == [plan.obs_id]
