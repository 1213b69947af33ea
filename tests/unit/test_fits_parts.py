"""The FITS flow's parts without Temporal: validation, header rows, md5 copies, re-ingest
rules, the watcher's settling rules, calibration associations and previews, on real small
FITS files written with astropy (GMOS-N with extensions, NIRI single-HDU; several types)."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime
from pathlib import Path

import fits_samples as fs
import pytest
from PIL import Image
from sqlmodel import Session, select

from unembargo.adapters import fits_check, fits_db, fits_preview, fits_watch
from unembargo.adapters.fits_files import DiskStore, copy_with_md5, md5_of
from unembargo.models import fits_flow as ff
from unembargo.models.fits import FitsDiskFile, FitsHeader, FitsSeen
from unembargo.models.tables import connect

LOC = "dataflow"


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(connect(f"sqlite:///{tmp_path / 'fits.db'}"))


@pytest.fixture
def night(tmp_path: Path) -> dict[str, Path]:
    return {s.name: fs.write(tmp_path / "df" / s.name, s, i) for i, s in enumerate(fs.night())}


def test_names_temporary_and_other_ignored() -> None:
    assert ff.name_kind("N20251231S0001.fits") == ff.FITS
    assert ff.name_kind("N20251231S0001.fits.bz2") == ff.FITS
    for temp in (".N20251231S0001.fits", "N20251231S0001.fits.tmp", "tmpN1.fits", "N1.fits.part", "N1.fits~"):
        assert ff.name_kind(temp) == ff.TEMPORARY, temp
    assert ff.name_kind("obslog.txt") == ff.OTHER
    with pytest.raises(ff.InvalidFitsName):
        ff.fits_workflow_id("../etc/N1.fits")


def test_valid_files_and_their_header_rows(night: dict[str, Path]) -> None:
    for path in night.values():
        assert fits_check.check(path).ok, path.name
    gmos = fits_check.headers(night["N20251231S0003.fits"])
    assert (gmos.instrument, gmos.observation_type, gmos.object) == ("GMOS-N", "OBJECT", "NGC 1275")
    # Two filter wheels, the open one left out; binning from the extension's CCDSUM.
    assert (gmos.filter, gmos.binning, gmos.exposure_time) == ("r_G0303", "2x2", 300.0)
    assert gmos.ut_datetime == datetime(2025, 12, 31, 5, 0, tzinfo=UTC)
    niri = fits_check.headers(night["N20251231S0005.fits"])
    assert (niri.instrument, niri.observation_type, niri.filter, niri.binning) == (
        "NIRI",
        "DARK",
        "H_G0203",
        "1x1",
    )


def test_invalid_files_are_named_errors(tmp_path: Path, night: dict[str, Path]) -> None:
    good = night["N20251231S0003.fits"].read_bytes()
    truncated = tmp_path / "N20251231S0100.fits"
    truncated.write_bytes(good[: len(good) - 3000])
    junk = tmp_path / "N20251231S0101.fits"
    junk.write_bytes(b"not a FITS file at all\n" * 200)
    for path in (truncated, junk):
        verdict = fits_check.check(path)
        assert not verdict.ok and verdict.errors, path.name
    assert "corrupted" in fits_check.check(truncated).summary()
    assert "SIMPLE" in fits_check.check(junk).summary()


def test_copy_with_md5_is_whole_or_absent(tmp_path: Path, night: dict[str, Path]) -> None:
    src = night["N20251231S0007.fits"]
    dst = tmp_path / "out" / src.name
    md5, size = copy_with_md5(src, dst)
    assert md5 == hashlib.md5(src.read_bytes()).hexdigest() == md5_of(dst)
    assert size == src.stat().st_size and dst.stat().st_mtime == src.stat().st_mtime
    assert [p.name for p in dst.parent.iterdir()] == [src.name]  # no temporary left
    store = DiskStore("dest", tmp_path / "out")
    assert store.stat(src.name) == (md5, size)
    assert store.stat("N20251231S9999.fits") is None


def test_ingest_rules(session: Session, night: dict[str, Path]) -> None:
    name = "N20251231S0003.fits"
    path = night[name]
    first = fits_db.ingest(session, name, LOC, path)
    assert (first.outcome, first.instrument, first.observation_type) == (ff.INGESTED, "GMOS-N", "OBJECT")
    # Unchanged lastmod: a no-op, with or without looking at the md5.
    assert fits_db.ingest(session, name, LOC, path).outcome == ff.UNCHANGED
    assert fits_db.ingest(session, name, LOC, path, force_md5=True).outcome == ff.UNCHANGED
    # Touched: lastmod moved, same bytes. A requeue re-ingests; --force-md5 does not.
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 60))
    assert fits_db.ingest(session, name, LOC, path, force_md5=True).outcome == ff.UNCHANGED
    assert fits_db.ingest(session, name, LOC, path).outcome == ff.REINGESTED
    # Rewritten with the lastmod kept: only --force-md5 sees it.
    mtime = path.stat().st_mtime
    fs.write(path, fs.Sample(name, "GMOS-N", "OBJECT", "i_G0302", 120.0), seed=9)
    os.utime(path, (mtime, mtime))
    assert fits_db.ingest(session, name, LOC, path).outcome == ff.UNCHANGED
    assert fits_db.ingest(session, name, LOC, path, force_md5=True).outcome == ff.REINGESTED
    assert fits_db.ingest(session, name, LOC, path, force=True).outcome == ff.REINGESTED
    rows = session.exec(select(FitsDiskFile).order_by(FitsDiskFile.id)).all()
    assert len(rows) == 4
    assert [(r.present, r.canonical) for r in rows] == [(False, False)] * 3 + [(True, True)]
    current = fits_db.current(session, name, LOC)
    assert current is not None and current.md5 == md5_of(path)
    header = session.exec(select(FitsHeader).where(FitsHeader.diskfile_id == current.id)).one()
    assert (header.filter, header.exposure_time) == ("i_G0302", 120.0)


def test_an_invalid_file_is_ingested_with_its_errors(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "N20251231S0200.fits"
    path.write_bytes(b"\0" * 5000)
    got = fits_db.ingest(session, path.name, LOC, path)
    assert not got.fits_ok
    row = fits_db.current(session, path.name, LOC)
    assert row is not None and row.fits_errors and not row.fits_ok


def test_settling_rules() -> None:
    assert ff.settle(100, 10, 95, None, 10) == ff.YOUNG
    assert ff.settle(100, 12, 50, (10, 40), 10) == ff.GROWING
    assert ff.settle(100, 12, 50, (12, 50), 10) == ff.READY
    assert ff.settle(100, 12, 50, None, 10) == ff.READY  # old already: a watcher catching up


def test_scan_waits_for_settled_valid_files(session: Session, tmp_path: Path) -> None:
    dhs = tmp_path / "dhs"
    samples = fs.night()
    fs.write(dhs / samples[0].name, samples[0])
    fs.write(dhs / samples[1].name, samples[1])
    fs.age(dhs / samples[0].name, 60)
    (dhs / ".N20251231S0099.fits.part").write_bytes(b"partial")
    (dhs / "obslog.txt").write_text("notes")
    got = fits_watch.scan(session, "dhs", dhs, min_age_s=10, invalid_after=3)
    # The young file waits; temporary and non-FITS names are not even counted.
    assert [r.name for r in got.ready] == [samples[0].name] and got.waiting == 1 and got.seen == 2
    fits_watch.mark_started(session, "dhs", got.ready[0])
    # Started, unchanged: never again. Touched with the same bytes: still not.
    assert fits_watch.scan(session, "dhs", dhs, 10, 3).ready == []
    fs.age(dhs / samples[0].name, 30)
    assert fits_watch.scan(session, "dhs", dhs, 10, 3).ready == []
    # The young one, once old enough.
    fs.age(dhs / samples[1].name, 60)
    assert [r.name for r in fits_watch.scan(session, "dhs", dhs, 10, 3).ready] == [samples[1].name]
    # Rewritten (another size): copied again.
    fs.write(dhs / samples[0].name, fs.Sample(samples[0].name, "GMOS-N", "BIAS", "", 0.0, "1x1"))
    fs.age(dhs / samples[0].name, 60)
    again = fits_watch.scan(session, "dhs", dhs, 10, 3).ready
    assert [r.name for r in again] == [samples[0].name, samples[1].name]


def test_a_growing_file_is_not_copied(session: Session, tmp_path: Path) -> None:
    dhs = tmp_path / "dhs"
    path = dhs / "N20251231S0300.fits"
    whole = fs.write(tmp_path / "whole.fits", fs.night()[2]).read_bytes()
    dhs.mkdir()
    path.write_bytes(whole[:2880])
    fs.age(path, 60)  # an NFS client's cached, old-looking mtime
    fits_watch.scan(session, "dhs", dhs, 10, 3)
    path.write_bytes(whole[:8640])
    fs.age(path, 60)
    assert fits_watch.scan(session, "dhs", dhs, 10, 3).ready == []  # grew since the last scan
    path.write_bytes(whole)
    fs.age(path, 60)
    assert fits_watch.scan(session, "dhs", dhs, 10, 3).ready == []
    assert [r.name for r in fits_watch.scan(session, "dhs", dhs, 10, 3).ready] == [path.name]


def test_a_file_invalid_repeatedly_is_reported_once_by_name(session: Session, tmp_path: Path) -> None:
    dhs = tmp_path / "dhs"
    dhs.mkdir()
    bad = dhs / "N20251231S0400.fits"
    bad.write_bytes(b"garbage" * 1000)
    fs.age(bad, 60)
    reports = [fits_watch.scan(session, "dhs", dhs, 10, 3).invalid for _ in range(5)]
    assert reports == [[], [], [bad.name], [], []]
    row = session.get(FitsSeen, ("dhs", bad.name))
    assert row is not None and row.state == ff.INVALID and "SIMPLE" in row.problem


def test_calibration_associations(session: Session, night: dict[str, Path], tmp_path: Path) -> None:
    # A science frame ingested before its calibrations gets them when they come.
    order = ["N20251231S0003.fits", "N20251231S0004.fits", "N20251231S0007.fits", "N20251231S0001.fits",
             "N20251231S0002.fits", "N20251231S0005.fits", "N20251231S0006.fits"]  # fmt: skip
    for name in order:
        fits_db.ingest(session, name, LOC, night[name])
        fits_db.associate(session, name, LOC, window_days=30)
    assert fits_db.associations(session, "N20251231S0003.fits", LOC) == {
        "BIAS": "N20251231S0001.fits",
        "FLAT": "N20251231S0002.fits",
    }  # GMOS-N 2x2 r: its bias and r flat; no 300 s dark
    assert fits_db.associations(session, "N20251231S0004.fits", LOC) == {}  # 1x1 g: nothing matches
    assert fits_db.associations(session, "N20251231S0007.fits", LOC) == {
        "DARK": "N20251231S0005.fits",
        "FLAT": "N20251231S0006.fits",
    }
    # A closer bias wins; one outside the window never does.
    closer = fs.Sample("N20251231S0008.fits", "GMOS-N", "BIAS", "", 0.0, when=datetime(2025, 12, 31, 4, 0))
    far = fs.Sample("N20250101S0001.fits", "GMOS-N", "BIAS", "", 0.0, when=datetime(2025, 1, 1))
    for s in (closer, far):
        fits_db.ingest(session, s.name, LOC, fs.write(tmp_path / s.name, s))
        fits_db.associate(session, s.name, LOC, window_days=30)
    got = fits_db.associate(session, "N20251231S0003.fits", LOC, window_days=30)
    assert got.science and got.found == {"BIAS": closer.name, "FLAT": "N20251231S0002.fits", "DARK": None}


def test_best_calibration_rules() -> None:
    t = datetime(2025, 12, 31, 5, tzinfo=UTC)
    sci = ff.Frame("s", "GMOS-N", "OBJECT", "2x2", "r", 300.0, t)
    flat_g = ff.Frame("fg", "GMOS-N", "FLAT", "2x2", "g", 1.0, t)
    flat_r = ff.Frame("fr", "GMOS-N", "FLAT", "2x2", "r", 1.0, t)
    bias_1x1 = ff.Frame("b1", "GMOS-N", "BIAS", "1x1", None, 0.0, t)
    dark = ff.Frame("d", "GMOS-N", "DARK", "2x2", None, 300.0, t)
    other = ff.Frame("o", "GMOS-S", "DARK", "2x2", None, 300.0, t)
    frames = [flat_g, flat_r, bias_1x1, dark, other]
    assert ff.best_calibration(sci, frames, ff.FLAT, 30) == flat_r
    assert ff.best_calibration(sci, frames, ff.BIAS, 30) is None
    assert ff.best_calibration(sci, frames, ff.DARK, 30) == dark


def test_preview_png(night: dict[str, Path]) -> None:
    png, width, height = fits_preview.render(night["N20251231S0003.fits"])
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size, (width, height)) == ("PNG", (fs.SIDE, fs.SIDE), (fs.SIDE, fs.SIDE))
    # A sensible stretch: the stars are white, the sky mid-grey, not one flat colour.
    pixels = sorted(image.tobytes())
    assert pixels[-1] == 255 and 40 < pixels[len(pixels) // 2] < 220
    with pytest.raises(ff.InvalidFits):
        fits_preview.first_image(_headers_only(night["N20251231S0003.fits"]))


def _headers_only(src: Path) -> Path:
    from astropy.io import fits

    out = src.with_name("N20251231S0500.fits")
    fits.PrimaryHDU(header=fits.getheader(src)).writeto(out)
    return out


def test_requeue_selection(session: Session, night: dict[str, Path]) -> None:
    root = next(iter(night.values())).parent
    for name in ("N20251231S0001.fits", "N20251231S0003.fits"):
        fits_db.ingest(session, name, LOC, night[name])
    old = night["N20251231S0001.fits"]
    fs.age(old, 3 * 86400)
    fits_db.ingest(session, old.name, LOC, old)  # lastmod three days ago now
    assert fits_db.requeue_names(session, LOC, root) == ["N20251231S0001.fits", "N20251231S0003.fits"]
    assert fits_db.requeue_names(session, LOC, root, days=1) == ["N20251231S0003.fits"]
    assert fits_db.requeue_names(session, LOC, root, file_re=r"S000[12]") == ["N20251231S0001.fits"]
    # By path: files on the disk, ingested or not.
    assert len(fits_db.requeue_names(session, LOC, root, path=".")) == len(night)
    assert fits_db.requeue_names(session, LOC, root, path="N20251231S0007.fits") == ["N20251231S0007.fits"]
    with pytest.raises(ValueError):
        fits_db.requeue_names(session, LOC, root, path="../elsewhere")


def test_step_table_and_operations() -> None:
    """Every step's activity is implemented once, on the queue of its location's operation."""
    from temporalio import activity

    from unembargo.activities.context import Resources
    from unembargo.activities.fits import FitsActivities, fits_activities
    from unembargo.models.locations import OPERATIONS, LocationType, Operation
    from unembargo.models.settings import Settings

    served = fits_activities(FitsActivities(Resources(Settings()), client=None))  # type: ignore[arg-type]
    names = {
        op: [activity._Definition.must_from_callable(fn).name for fn in fns] for op, fns in served.items()
    }
    every = [n for ns in names.values() for n in ns]
    assert sorted(every) == sorted(
        {s.activity for s in ff.STEPS.values()} | {ff.SCAN_ACTIVITY, ff.REQUEUE_ACTIVITY}
    )
    for step, spec in ff.STEPS.items():
        assert spec.activity in names[ff.OPERATION_OF_ROLE[spec.location]], step
    # Each role's operation is one its location type serves.
    types = {
        ff.DHS: LocationType.SOURCE,
        ff.DATAFLOW: LocationType.BUFFER,
        ff.DESTINATION: LocationType.LONG_TERM_ARCHIVE,
    }
    for role, operation in ff.OPERATION_OF_ROLE.items():
        assert Operation(operation) in OPERATIONS[types[role]], role
    assert list(ff.Step) == list(ff.STEPS)
