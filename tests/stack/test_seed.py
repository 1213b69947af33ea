"""The seeded embargo bucket and butler answer the questions the workflows will ask.

Real S3 (the test stack's) and real butler repos; nothing is mocked. The module seeds
a bucket and repos of its own: its window queries expect exactly its exposures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from astropy.io import fits
from astropy.time import Time
from lsst.daf.butler import Butler, ButlerConfig, FileDescriptor, Location

from support import SMALL, seed_small
from unembargo.devstack import lsstcam, skymap
from unembargo.devstack.butler_repos import GUIDER_RAW, GUIDER_RUN, RAW, RAW_RUN, ensure_repos
from unembargo.devstack.formatter import SyntheticRawFormatter
from unembargo.devstack.seed import SeededExposure, SeedReport, seed, seed_exposure
from unembargo.models.settings import Settings

# The embargo cutoff (now - 80 h) falls between the dark (seq 2) and the science
# exposure (seq 3) of day_obs 20260101, so the window's edge is exercised.
NOW = datetime(2026, 1, 5, 7, 1, 30, tzinfo=UTC)
DAYS = [0, 3]
PER_DAY = 3
ODD_NAMES = {"notes with spaces.txt": b"operator note\n", "ünïcødé/ß 1.txt": b"\xce\xbb\n"}
# The incomplete exposure: a small one (support.SMALL) with one raw not yet written.
DROPPED = {SMALL[-1]}


@dataclass
class Seeded:
    settings: Settings
    report: SeedReport
    no_tract: SeededExposure
    incomplete: SeededExposure
    guider_odd: SeededExposure

    @property
    def all(self) -> list[SeededExposure]:
        return [*self.report.exposures, self.no_tract, self.incomplete, self.guider_odd]


@pytest.fixture(scope="module")
def seeded(module_settings: Settings) -> Seeded:
    """A bucket and repos of this module's own, seeded with the exposures the tests ask about."""
    settings = module_settings
    report = seed(settings, DAYS, PER_DAY, now=NOW)
    ensure_repos(settings)
    return Seeded(
        settings=settings,
        report=report,
        # Small: the tract join and the completion need no full focal plane (the seed()ed ones are).
        no_tract=seed_small(settings, 20251228, 40, on_tract=False),
        incomplete=seed_exposure(
            settings, 20251228, 41, detectors=set(SMALL) - DROPPED, expected=SMALL, file_size=8 * 1024
        ),
        guider_odd=seed_exposure(
            settings, 20251228, 42, guiders_as=GUIDER_RAW, extra_objects=ODD_NAMES, file_size=16 * 1024
        ),
    )


@pytest.fixture
def butler(seeded: Seeded) -> Iterator[Butler]:
    with Butler.from_config(seeded.settings.embargo_butler) as b:
        yield b


def _raws(butler: Butler, exposure: int, dataset_type: str = RAW, run: str = RAW_RUN) -> list:
    return butler.query_datasets(
        dataset_type, collections=run, instrument=lsstcam.INSTRUMENT, exposure=exposure, explain=False
    )


def _tracts(butler: Butler, exposure: int) -> set[int]:
    """The cron tool's exposure -> tract query (visit id equals exposure id)."""
    with butler.query() as q:
        q = q.join_dimensions(["tract"]).where(
            "visit = _exposure",
            instrument=lsstcam.INSTRUMENT,
            skymap=skymap.SKYMAP,
            bind={"_exposure": exposure},
        )
        return {int(d["tract"]) for d in q.data_ids(["tract"])}


def _listing(settings: Settings, prefix: str) -> dict[str, int]:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=prefix)
    return {o["Key"][len(prefix) :]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_seed_spreads_exposures_around_the_embargo_cutoff(seeded: Seeded) -> None:
    """The seeder writes bias, dark and science exposures on both sides of the embargo cutoff."""
    report = seeded.report
    assert len(report.exposures) == len(DAYS) * PER_DAY and report.skipped_future == 0
    cutoff = NOW - timedelta(hours=80)
    due = [e for e in report.exposures if e.end <= cutoff]
    assert 0 < len(due) < len(report.exposures)
    kinds = {e.observation_type for e in report.exposures}
    assert kinds == {"bias", "dark", "science"}
    assert all(e.can_see_sky == (e.observation_type == "science") for e in report.exposures)


def test_window_query_returns_exactly_the_due_exposures(seeded: Seeded, butler: Butler) -> None:
    """The real embargo butler's timespan query returns exactly the due exposures."""
    t_lo = Time(NOW - timedelta(days=30), scale="utc")
    t_hi = Time(NOW - seeded.settings.embargo_period, scale="utc")
    records = butler.query_dimension_records(
        "exposure",
        instrument=lsstcam.INSTRUMENT,
        where="exposure.timespan.end > t_lo AND exposure.timespan.end <= t_hi",
        bind={"t_lo": t_lo, "t_hi": t_hi},
        explain=False,
    )
    cutoff = NOW - seeded.settings.embargo_period
    expected = {e.obs_id for e in seeded.all if e.end <= cutoff}
    assert {r.obs_id for r in records} == expected
    assert "MC_O_20260101_000002" in expected and "MC_O_20260101_000003" not in expected


def test_every_exposure_has_205_raws_in_place_in_the_bucket(seeded: Seeded, butler: Butler) -> None:
    """Every seeded exposure has its 205 raws in the real butler, ingested in place from the real bucket."""
    settings = seeded.settings
    for exp in seeded.report.exposures:
        refs = _raws(butler, exp.exposure_id)
        assert len(refs) == 205 == exp.raws, exp.obs_id
        assert {r.dataId["detector"] for r in refs} == set(range(205))
        listing = _listing(settings, exp.prefix)
        assert set(listing) == set(exp.names)
        for ref in refs[:5]:
            uri = butler.getURI(ref)
            assert uri.scheme == "s3" and uri.netloc == settings.s3_bucket
            name = uri.relativeToPathRoot.removeprefix(exp.prefix)
            assert uri.relativeToPathRoot.startswith(exp.prefix) and name in listing


def test_folder_holds_sidecars_and_expected_sensors(seeded: Seeded) -> None:
    """Each folder holds a sidecar per raw and an expectedSensors file listing all 205."""
    exp = seeded.report.exposures[-1]
    names = set(exp.names)
    assert len(names) == 205 * 2 + 1
    assert f"{exp.obs_id}_R22_S11.fits" in names and f"{exp.obs_id}_R22_S11.json" in names
    s3 = boto3.client("s3", endpoint_url=seeded.settings.s3_endpoint_url)
    body = s3.get_object(
        Bucket=seeded.settings.s3_bucket, Key=f"{exp.prefix}{exp.obs_id}_expectedSensors.json"
    )
    sensors = json.loads(body["Body"].read())["expectedSensors"]
    assert len(sensors) == 205 and sensors["R01_S00"] == "SCIENCE"
    assert sensors["R00_SG0"] == "GUIDER" and sensors["R00_SW0"] == "WAVEFRONT"
    assert sum(kind == "SCIENCE" for kind in sensors.values()) == 189


def test_visit_to_tract_join_finds_real_tracts(seeded: Seeded, butler: Butler) -> None:
    """The butler's visit-to-tract join finds the tracts of on-sky visits, none for the rest."""
    for exp in seeded.report.exposures:
        found = _tracts(butler, exp.exposure_id)
        assert found == set(exp.tracts), exp.obs_id
        assert bool(found) == (exp.observation_type == "science"), exp.obs_id
    assert _tracts(butler, seeded.no_tract.exposure_id) == set() == set(seeded.no_tract.tracts)
    visits = butler.query_dimension_records("visit", instrument=lsstcam.INSTRUMENT, explain=False)
    assert seeded.no_tract.exposure_id in {v.id for v in visits}


def test_incomplete_exposure_then_completed(seeded: Seeded, butler: Butler) -> None:
    """An exposure seeded with raws missing, then again in full, ends complete in bucket and butler."""
    exp = seeded.incomplete
    assert exp.raws == len(SMALL) - len(DROPPED) == len(_raws(butler, exp.exposure_id))
    settings = seeded.settings
    listing = _listing(settings, exp.prefix)
    sensors = json.loads(
        boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
        .get_object(Bucket=settings.s3_bucket, Key=f"{exp.prefix}{exp.obs_id}_expectedSensors.json")["Body"]
        .read()
    )["expectedSensors"]
    assert len(sensors) == len(SMALL) and sum(n.endswith(".fits") for n in listing) == len(SMALL) - 1
    completed = seed_small(settings, 20251228, 41)
    with Butler.from_config(settings.embargo_butler) as fresh:
        assert completed.raws == len(SMALL) == len(_raws(fresh, exp.exposure_id))


def test_guider_raws_and_odd_names(seeded: Seeded, butler: Butler) -> None:
    """Guider raws as guider_raw in their own run, and odd object names, are seeded."""
    exp = seeded.guider_odd
    assert (exp.raws, exp.guider_raws) == (197, 8)
    raws = _raws(butler, exp.exposure_id)
    guiders = _raws(butler, exp.exposure_id, GUIDER_RAW, GUIDER_RUN)
    assert len(raws) == 197 and len(guiders) == 8
    assert all(butler.getURI(g).basename().endswith("_guider.fits") for g in guiders)
    listing = _listing(seeded.settings, exp.prefix)
    assert set(ODD_NAMES) <= set(listing)
    assert all(size < 20 * 1024 for name, size in listing.items() if name.endswith(".fits"))


def test_reseeding_changes_nothing(seeded: Seeded) -> None:
    """Seeding an exposure again rewrites identical bytes and inserts nothing."""
    settings = seeded.settings
    first = seeded.report.exposures[0]
    again = seed_exposure(settings, first.day_obs, first.seq_num, observation_type=first.observation_type)
    ensure_repos(settings)
    assert again.names == first.names and again.end == first.end
    with Butler.from_config(settings.embargo_butler) as b:
        assert len(_raws(b, first.exposure_id)) == 205
        records = b.query_dimension_records("exposure", instrument=lsstcam.INSTRUMENT, explain=False)
        assert sum(r.id == first.exposure_id for r in records) == 1


def test_formatter_reads_a_raw_from_the_bucket(seeded: Seeded, butler: Butler) -> None:
    """The synthetic raw formatter reads a raw and its header from the real bucket through the butler."""
    exp = seeded.report.exposures[-1]
    ref = next(r for r in _raws(butler, exp.exposure_id) if r.dataId["detector"] == 94)
    descriptor = FileDescriptor(Location(None, butler.getURI(ref)), ref.datasetType.storageClass)
    hdus = SyntheticRawFormatter(descriptor, ref=ref).read()
    assert isinstance(hdus, fits.HDUList) and hdus[1].data.shape[1] == 256
    assert hdus[0].header["OBSID"] == exp.obs_id and hdus[0].header["DETNAME"] == "R22_S11"
    header = SyntheticRawFormatter(descriptor, ref=ref).read(component="metadata")
    assert header["EXTNAME"] == "Segment10" and header["INSTRUME"] == "LSSTCam"


def test_main_butler_shares_universe_and_instrument(seeded: Seeded) -> None:
    """The main butler has the embargo butler's universe and instrument; the embargo datastore is in S3."""
    with (
        Butler.from_config(seeded.settings.main_butler) as main,
        Butler.from_config(seeded.settings.embargo_butler) as embargo,
    ):
        assert main.dimensions == embargo.dimensions
        assert len(main.query_dimension_records("detector", instrument=lsstcam.INSTRUMENT)) == 205
    root = ButlerConfig(seeded.settings.embargo_butler)["datastore", "root"]
    assert root == f"s3://{seeded.settings.s3_bucket}/butler/"
