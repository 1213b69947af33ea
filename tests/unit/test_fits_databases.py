"""The archive's own database: the archive's ingest, preview and calibration rows are written
to it, the dataflow's (the summit's) to the main database, by the real activities (run with
the SDK's activity environment) on real FITS files and two SQLite databases."""

from __future__ import annotations

import shutil
from pathlib import Path

import fits_samples as fs
import pytest
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

from unembargo.activities.context import Resources
from unembargo.activities.fits import FitsActivities
from unembargo.adapters import fits_db
from unembargo.models import fits_flow as ff
from unembargo.models.fits import (
    FitsCalibration,
    FitsDiskFile,
    FitsFile,
    FitsHeader,
    FitsPreview,
    FitsSettings,
)
from unembargo.models.locations import DataLocation, LocationType, Site, StorageType, upsert_location
from unembargo.models.settings import Settings
from unembargo.models.tables import connect

BIAS, SCIENCE = "N20251231S0001.fits", "N20251231S0003.fits"


@pytest.fixture
def sites(tmp_path: Path) -> dict[str, str]:
    """A main database with a dataflow and an archive disk; the archive's database URL."""
    main = f"sqlite:///{tmp_path / 'main.db'}"
    with Session(connect(main)) as session:
        for name, kind in (("dataflow", LocationType.BUFFER), ("archive", LocationType.LONG_TERM_ARCHIVE)):
            (tmp_path / name).mkdir()
            row = DataLocation(name=name, site="Gemini North", type=kind, storage=StorageType.DISK,
                               path=str(tmp_path / name))  # fmt: skip
            upsert_location(session, row, short_name="gn")
    return {"main": main, "archive": f"sqlite:///{tmp_path / 'archive.db'}"}


def test_only_the_archive_location_is_routed_to_its_database(sites: dict[str, str]) -> None:
    main = connect(sites["main"])
    shared = fits_db.FitsDatabases(lambda: main, "archive", None)
    assert shared.engine_for("archive") is main and not shared.separate("archive")
    own = fits_db.FitsDatabases(lambda: main, "archive", sites["archive"])
    assert own.engine_for("dataflow") is main and own.engine_for("mirror") is main
    archive = own.engine_for("archive")
    assert archive is not main and own.engine_for("archive") is archive  # connected once
    # The archive's database holds the rows its foreign keys name: its location and site.
    with Session(archive) as session:
        assert [loc.name for loc in session.exec(select(DataLocation)).all()] == ["archive"]
        assert [s.name for s in session.exec(select(Site)).all()] == ["Gemini North"]


def _fits_rows(url: str) -> dict[str, list[tuple[str, str]]]:
    """(file name, location) of each FITS row in the database at ``url``."""
    with Session(connect(url)) as session:
        names = {f.id: f.name for f in session.exec(select(FitsFile)).all()}
        disks = session.exec(select(FitsDiskFile)).all()
        of = {d.id: (names[d.file_id], d.location) for d in disks}
        return {
            "diskfile": sorted(of.values()),
            "header": sorted(of[h.diskfile_id] for h in session.exec(select(FitsHeader)).all()),
            "preview": sorted((names[p.file_id], p.location) for p in session.exec(select(FitsPreview))),
            "calibration": sorted((names[c.science_file_id], c.location)
                                  for c in session.exec(select(FitsCalibration)).all()),
        }  # fmt: skip


def test_the_archive_steps_write_to_the_archive_database(tmp_path: Path, sites: dict[str, str]) -> None:
    samples = {s.name: s for s in fs.night()}
    for i, name in enumerate((BIAS, SCIENCE)):
        written = fs.write(tmp_path / "dataflow" / name, samples[name], seed=i)
        shutil.copy(written, tmp_path / "archive" / name)
    fits = FitsSettings(dataflow="dataflow", destinations=["archive"], archive="archive",
                        archive_database_url=sites["archive"])  # fmt: skip
    acts = FitsActivities(Resources(Settings(database_url=sites["main"])), client=None, settings=fits)  # type: ignore[arg-type]
    env = ActivityEnvironment()
    for name in (BIAS, SCIENCE):
        env.run(acts.fits_ingest, ff.IngestInput(name, "dataflow"))
        assert env.run(acts.fits_archive_ingest, ff.IngestInput(name, "archive")).outcome == ff.INGESTED
        assert env.run(acts.fits_preview, ff.PreviewInput(name, "archive")).made
        env.run(acts.fits_calibration, ff.CalibrationInput(name, "archive"))
    # Run again: every step finds its "done when" in the archive's database.
    assert env.run(acts.fits_archive_ingest, ff.IngestInput(SCIENCE, "archive")).outcome == ff.UNCHANGED
    assert not env.run(acts.fits_preview, ff.PreviewInput(SCIENCE, "archive")).made

    both = [(BIAS, "archive"), (SCIENCE, "archive")]
    assert _fits_rows(sites["archive"]) == {
        "diskfile": both, "header": both, "preview": both,
        "calibration": [(SCIENCE, "archive")],
    }  # fmt: skip
    summit = [(BIAS, "dataflow"), (SCIENCE, "dataflow")]
    assert _fits_rows(sites["main"]) == {
        "diskfile": summit, "header": summit, "preview": [], "calibration": [],
    }  # fmt: skip
    with Session(connect(sites["archive"])) as session:
        assert fits_db.associations(session, SCIENCE, "archive") == {"BIAS": BIAS}
    assert (tmp_path / "archive" / ff.preview_key(SCIENCE)).is_file()
