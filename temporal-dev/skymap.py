"""A synthetic piece of the ``lsst_cells_v1`` skymap: ring tracts with real regions.

The real skymap covers the sky with about 19,000 tracts laid out in rings of
declination. The local stack numbers tracts the same way (a south polar cap,
120 rings, a north polar cap) but registers only the tracts that touch
``COVERED``, a patch of southern sky where seeded visits point, so a
``visit -> tract`` join finds real tract ids quickly. A visit pointed at
``NO_TRACT_POINTING`` overlaps no registered tract.

    >>> t = tract(1000); t.id == 1000 and t.region.contains(t.center())
    True
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from functools import lru_cache

from lsst.sphgeom import ConvexPolygon, LonLat, Region, UnitVector3d

SKYMAP = "lsst_cells_v1"
N_RINGS = 120
RING_WIDTH = 180.0 / (N_RINGS + 1)
# Neighbouring tracts overlap by one arcminute, as in the real skymap.
TRACT_OVERLAP = 1.0 / 60.0
PATCHES_PER_SIDE = 10

# (ra_min, ra_max, dec_min, dec_max) in degrees: where tracts are registered.
COVERED = (50.0, 70.0, -40.0, -25.0)
# Seeded pointings stay this far inside COVERED so the whole focal plane is covered.
_POINTING_MARGIN = 2.5
NO_TRACT_POINTING = (200.0, 30.0)


@dataclass(frozen=True)
class Tract:
    """One tract: its id and its RA/Dec box (degrees, RA may exceed 360)."""

    id: int
    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float

    def center(self) -> UnitVector3d:
        ra = (self.ra_min + self.ra_max) / 2
        return UnitVector3d(LonLat.fromDegrees(ra, (self.dec_min + self.dec_max) / 2))

    @property
    def region(self) -> ConvexPolygon:
        """Box corners joined by great circles, plus the overlap margin."""
        dec_lo = max(self.dec_min - TRACT_OVERLAP, -89.9)
        dec_hi = min(self.dec_max + TRACT_OVERLAP, 89.9)
        widest = max(abs(dec_lo), abs(dec_hi))
        pad = min(TRACT_OVERLAP / math.cos(math.radians(widest)), 1.0)
        ras = (self.ra_min - pad, (self.ra_min + self.ra_max) / 2, self.ra_max + pad)
        corners = [LonLat.fromDegrees(ra, dec) for ra in ras for dec in (dec_lo, dec_hi)]
        return ConvexPolygon.convexHull([UnitVector3d(c) for c in corners])


def _ring_bounds(ring: int) -> tuple[float, float]:
    low = -90.0 + RING_WIDTH / 2 + ring * RING_WIDTH
    return low, low + RING_WIDTH


@lru_cache(maxsize=1)
def ring_sizes() -> tuple[int, ...]:
    """Tracts per ring: enough that none is wider than a ring at its widest edge."""
    sizes = []
    for ring in range(N_RINGS):
        low, high = _ring_bounds(ring)
        widest = min(abs(low), abs(high)) if low * high > 0 else 0.0
        sizes.append(max(1, math.ceil(360.0 * math.cos(math.radians(widest)) / RING_WIDTH)))
    return tuple(sizes)


@lru_cache(maxsize=1)
def _ring_first_ids() -> tuple[int, ...]:
    firsts, next_id = [], 1
    for size in ring_sizes():
        firsts.append(next_id)
        next_id += size
    return tuple(firsts)


def tract_max() -> int:
    """One past the largest tract id (the north polar cap)."""
    return _ring_first_ids()[-1] + ring_sizes()[-1] + 1


def tract(tract_id: int) -> Tract:
    """The tract with a given id; polar caps are omitted (never seeded)."""
    firsts = _ring_first_ids()
    for ring in range(N_RINGS - 1, -1, -1):
        if tract_id >= firsts[ring]:
            index = tract_id - firsts[ring]
            if index >= ring_sizes()[ring]:
                break
            step = 360.0 / ring_sizes()[ring]
            low, high = _ring_bounds(ring)
            return Tract(tract_id, (index - 0.5) * step, (index + 0.5) * step, low, high)
    raise ValueError(f"tract {tract_id} is a polar cap or outside 0..{tract_max() - 1}")


def _ring_tracts_in(ring: int, ra_min: float, ra_max: float) -> list[Tract]:
    step = 360.0 / ring_sizes()[ring]
    first = math.floor(ra_min / step + 0.5)
    last = math.floor(ra_max / step + 0.5)
    return [tract(_ring_first_ids()[ring] + i % ring_sizes()[ring]) for i in range(first, last + 1)]


@lru_cache(maxsize=1)
def covered_tracts() -> tuple[Tract, ...]:
    """Every tract that touches COVERED: the ones the local stack registers."""
    ra_min, ra_max, dec_min, dec_max = COVERED
    found: list[Tract] = []
    for ring in range(N_RINGS):
        low, high = _ring_bounds(ring)
        if high >= dec_min and low <= dec_max:
            found += _ring_tracts_in(ring, ra_min, ra_max)
    return tuple(found)


def skymap_hash() -> bytes:
    """Stable digest of the parameters above, standing in for the skymap config hash."""
    params = f"{SKYMAP}:{N_RINGS}:{TRACT_OVERLAP}:{PATCHES_PER_SIDE}:{COVERED}"
    return hashlib.sha1(params.encode()).digest()


def overlapping_tracts(region: Region) -> tuple[int, ...]:
    """Registered tracts a region overlaps, as the butler's spatial join decides."""
    return tuple(t.id for t in covered_tracts() if t.region.overlaps(region) is not False)


def random_pointing(rng: random.Random) -> tuple[float, float]:
    """A boresight (ra, dec) whose whole field lies on registered tracts."""
    ra_min, ra_max, dec_min, dec_max = COVERED
    m = _POINTING_MARGIN
    return rng.uniform(ra_min + m, ra_max - m), rng.uniform(dec_min + m, dec_max - m)
