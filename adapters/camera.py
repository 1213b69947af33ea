"""Sky regions of a pointed camera: the focal plane and each detector, for visit records.

What obs_lsst's camera geometry gives defineVisits, reduced to what a one-to-one visit
records: a convex region per detector and one for the whole focal plane. The layout is
the LSSTCam one the local stack's registries describe (temporal-dev/lsstcam.py, which
draws its seeded regions with these functions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

SCIENCE = "SCIENCE"

# Focal plane scale: 10 um pixels at 0.2 arcsec, i.e. 20 arcsec per mm.
_DEG_PER_MM = 20.0 / 3600.0
_RAFT_PITCH = 127.0 * _DEG_PER_MM
_CCD_PITCH = 42.25 * _DEG_PER_MM
_CCD_HALF = 20.0 * _DEG_PER_MM
# Corner-raft sensors (centre x, centre y, half-height) in CCD pitches from the raft centre.
_CORNER_LAYOUT = {
    "SG0": (-0.5, 0.5, 1.0),
    "SG1": (0.5, -0.5, 1.0),
    "SW0": (0.5, 0.25, 0.5),
    "SW1": (0.5, 0.75, 0.5),
}


class Placement(Protocol):
    """Where a detector sits: its raft (``R22``), its slot in the raft (``S11``), its purpose."""

    @property
    def raft(self) -> str: ...

    @property
    def name_in_raft(self) -> str: ...

    @property
    def purpose(self) -> str: ...


@dataclass(frozen=True)
class Placed:
    """A detector as its registry record places it: raft, slot, purpose."""

    id: int
    raft: str
    name_in_raft: str
    purpose: str


def corners(det: Placement) -> list[tuple[float, float]]:
    """Corners of a detector in focal-plane degrees (x, y), boresight at the origin."""
    row, col = int(det.raft[1]), int(det.raft[2])
    raft_x, raft_y = (col - 2) * _RAFT_PITCH, (row - 2) * _RAFT_PITCH
    if det.purpose == SCIENCE:
        sy, sx = int(det.name_in_raft[1]), int(det.name_in_raft[2])
        cx, cy, half_y = (sx - 1) * _CCD_PITCH, (sy - 1) * _CCD_PITCH, _CCD_HALF
    else:
        px, py, frac = _CORNER_LAYOUT[det.name_in_raft]
        cx, cy, half_y = px * _CCD_PITCH, py * _CCD_PITCH, _CCD_HALF * frac
    x0, y0 = raft_x + cx, raft_y + cy
    return [
        (x0 - _CCD_HALF, y0 - half_y),
        (x0 + _CCD_HALF, y0 - half_y),
        (x0 + _CCD_HALF, y0 + half_y),
        (x0 - _CCD_HALF, y0 + half_y),
    ]


def _deproject(x: float, y: float, ra: float, dec: float, rotation: float) -> UnitVector3d:
    """Sky direction of focal-plane offset (x, y) degrees: rotate, then gnomonic inverse."""
    rot = math.radians(rotation)
    xi = math.radians(x * math.cos(rot) - y * math.sin(rot))
    eta = math.radians(x * math.sin(rot) + y * math.cos(rot))
    ra0, dec0 = math.radians(ra), math.radians(dec)
    denom = math.cos(dec0) - eta * math.sin(dec0)
    ra_p = ra0 + math.atan2(xi, denom)
    dec_p = math.atan2(math.sin(dec0) + eta * math.cos(dec0), math.hypot(xi, denom))
    return UnitVector3d(LonLat.fromRadians(ra_p, dec_p))


def sky_polygon(
    points: Iterable[tuple[float, float]], ra: float, dec: float, rotation: float
) -> ConvexPolygon:
    return ConvexPolygon.convexHull([_deproject(x, y, ra, dec, rotation) for x, y in points])


def detector_region(det: Placement, ra: float, dec: float, rotation: float) -> ConvexPolygon:
    return sky_polygon(corners(det), ra, dec, rotation)


def focal_plane_region(
    detectors: Sequence[Placement], ra: float, dec: float, rotation: float
) -> ConvexPolygon:
    """Hull of every detector of the camera (all of them, not only those read)."""
    return sky_polygon([c for det in detectors for c in corners(det)], ra, dec, rotation)
