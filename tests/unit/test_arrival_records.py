"""Dimension records from FITS headers (adapters/arrival_ingest.py) equal what the seeder
writes (temporal-dev/seed.py, the reference), for science and calibration exposures."""

from __future__ import annotations

import pytest

from unembargo.adapters import arrival_ingest
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
