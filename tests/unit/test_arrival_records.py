"""Dimension records from FITS headers (adapters/arrival_ingest.py) equal what the seeder
writes (temporal-dev/seed.py, the reference), for science and calibration exposures; and
the visit geometry (adapters/camera.py) equals the local stack's."""

from __future__ import annotations

import pytest

from unembargo.adapters import arrival_ingest, camera
from unembargo.devstack import lsstcam
from unembargo.devstack.seed import _exposure_cards, exposure_records, plan_exposure, raw_file


@pytest.mark.parametrize(("seq", "kind"), [(10, "science"), (1, "bias"), (2, "dark")])
def test_records_from_headers_equal_the_seeders(seq, kind):
    plan = plan_exposure(20251231, seq, kind)
    det = lsstcam.DETECTORS[94]
    data, _ = raw_file(plan, det, 16 * 1024, _exposure_cards(plan))
    header = arrival_ingest._headers("x.fits", data)
    assert header["DETNAME"] == det.full_name
    got = arrival_ingest.exposure_records("LSSTCam", header)
    want = exposure_records(plan, [det])
    for element in ("day_obs", "group", "exposure"):
        (g,), (w,) = got[element], want[element]
        assert g.keys() == w.keys(), element
        for field, value in w.items():
            if field == "timespan":
                assert (
                    abs((g[field].begin - value.begin).sec) < 1e-6
                    and abs((g[field].end - value.end).sec) < 1e-6
                )
            else:
                assert g[field] == value, (element, field)


def test_visit_regions_equal_the_local_stacks_geometry():
    placed = [camera.Placed(d.id, d.raft, d.name_in_raft, d.purpose) for d in lsstcam.DETECTORS]
    ra, dec, angle = 53.1, -28.2, 117.5
    for det, p in zip(lsstcam.DETECTORS[::17], placed[::17], strict=True):
        assert camera.detector_region(p, ra, dec, angle) == lsstcam.detector_region(det, ra, dec, angle)
    assert camera.focal_plane_region(placed, ra, dec, angle) == lsstcam.focal_plane_region(ra, dec, angle)
