"""Small real FITS files as Gemini's instruments write them, for the FITS flow's tests.

GMOS writes a primary header and image extensions (CCDSUM in the extensions, two filter
wheels); NIRI and F2 one image in the primary HDU. Data: a noisy sky with a few stars,
64x64 pixels, so a file is some kilobytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

SIDE = 64


@dataclass(frozen=True)
class Sample:
    name: str
    instrument: str
    obstype: str
    filter: str
    exptime: float
    binning: str = "2x2"
    when: datetime = datetime(2025, 12, 31, 5, 0, 0)
    object: str = ""


def _data(seed: int, obstype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = {"BIAS": 500.0, "DARK": 510.0, "FLAT": 20000.0}.get(obstype, 1200.0)
    data = rng.normal(level, 10.0, (SIDE, SIDE))
    if obstype == "OBJECT":
        yy, xx = np.mgrid[:SIDE, :SIDE]
        for x, y, flux in ((20, 30, 5e4), (45, 12, 2e4), (50, 50, 8e3)):
            data += flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)
    return data.astype(np.int16 if obstype in ("BIAS", "DARK") else np.float32)


def header(s: Sample) -> fits.Header:
    h = fits.Header()
    h["INSTRUME"] = s.instrument
    h["OBSTYPE"] = s.obstype
    h["OBJECT"] = s.object or ("Bias" if s.obstype == "BIAS" else s.obstype.title())
    h["EXPTIME"] = s.exptime
    h["DATE-OBS"] = s.when.strftime("%Y-%m-%d")
    h["TIME-OBS"] = s.when.strftime("%H:%M:%S.0")
    h["OBSERVAT"] = "Gemini-North"
    if s.instrument.startswith("GMOS"):
        first, _, second = s.filter.partition("&")
        h["FILTER1"] = first or "open1-6"
        h["FILTER2"] = second or "open2-8"
    else:
        h["FILTER"] = s.filter
        x, y = s.binning.split("x")
        h["XBIN"], h["YBIN"] = int(x), int(y)
    return h


def write(path: Path, s: Sample, seed: int = 0) -> Path:
    """Write ``s`` to ``path`` (a real FITS file astropy verifies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _data(seed, s.obstype)
    if s.instrument.startswith("GMOS"):
        ext = fits.ImageHDU(data, name="SCI")
        ext.header["CCDSUM"] = s.binning.replace("x", " ")
        hdul = fits.HDUList([fits.PrimaryHDU(header=header(s)), ext])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data, header=header(s))])
    hdul.writeto(path, overwrite=True, checksum=True)
    return path


def night(day: datetime = datetime(2025, 12, 31, 5, 0, 0)) -> list[Sample]:
    """A night of GMOS-N and NIRI files: science frames and their biases, flats and darks."""
    d = day.strftime("%Y%m%d")

    def n(i: int) -> str:
        return f"N{d}S{i:04d}.fits"

    return [
        Sample(n(1), "GMOS-N", "BIAS", "", 0.0, when=day - timedelta(hours=3)),
        Sample(n(2), "GMOS-N", "FLAT", "r_G0303", 2.0, when=day - timedelta(hours=2)),
        Sample(n(3), "GMOS-N", "OBJECT", "r_G0303", 300.0, when=day, object="NGC 1275"),
        Sample(n(4), "GMOS-N", "OBJECT", "g_G0301", 300.0, "1x1", when=day, object="M 31"),
        Sample(n(5), "NIRI", "DARK", "H_G0203", 30.0, "1x1", when=day - timedelta(hours=1)),
        Sample(n(6), "NIRI", "FLAT", "H_G0203", 5.0, "1x1", when=day - timedelta(hours=1)),
        Sample(n(7), "NIRI", "OBJECT", "H_G0203", 30.0, "1x1", when=day, object="HD 1234"),
    ]


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` old (its modification time)."""
    when = path.stat().st_mtime - seconds
    os.utime(path, (when, when))
