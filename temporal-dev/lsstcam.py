"""LSSTCam as a real embargo registry records it, for the synthetic local stack.

obs_lsst is not installable here, so the few facts the stack needs live in this
one module: detector numbering, physical filters, id and name rules, and a coarse
focal-plane layout good enough to give visits and detectors plausible sky regions.

    >>> DETECTORS[0].full_name, DETECTORS[94].full_name, DETECTORS[191].full_name
    ('R01_S00', 'R22_S11', 'R00_SW0')
    >>> exposure_id(20250415, 52), obs_id(20250415, 52)
    (2025041500052, 'MC_O_20250415_000052')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from lsst.sphgeom import ConvexPolygon

from unembargo.adapters.camera import corners as detector_corners
from unembargo.adapters.camera import sky_polygon

INSTRUMENT = "LSSTCam"
# Recorded in the instrument record; never imported by daf_butler alone.
INSTRUMENT_CLASS = "lsst.obs.lsst.LsstCam"

# The limits obs_lsst declares for LSSTCam ids.
EXPOSURE_MAX = 7050123199999
VISIT_MAX = 7050123199999
DETECTOR_MAX = 1000

# Visit systems as obs_base numbers them; LSSTCam prefers by-seq-start-end.
VISIT_SYSTEMS = {0: "one-to-one", 1: "by-group-metadata", 2: "by-seq-start-end"}
DEFAULT_VISIT_SYSTEM = 2

SCIENCE, WAVEFRONT, GUIDER = "SCIENCE", "WAVEFRONT", "GUIDER"

# Physical filter -> band, as obs_lsst defines the LSSTCam filters.
FILTERS = {
    "u_24": "u",
    "g_6": "g",
    "r_57": "r",
    "i_39": "i",
    "z_20": "z",
    "y_10": "y",
    "ph_5": "white",
    "ef_43": "white",
}
SKY_FILTERS = ("u_24", "g_6", "r_57", "i_39", "z_20", "y_10")

CORNER_RAFTS = ("R00", "R04", "R40", "R44")
_CORNER_SENSORS = (("SG0", GUIDER), ("SG1", GUIDER), ("SW0", WAVEFRONT), ("SW1", WAVEFRONT))


@dataclass(frozen=True)
class Detector:
    """One LSSTCam detector as the registry's detector record describes it."""

    id: int
    raft: str
    name_in_raft: str
    purpose: str

    @property
    def full_name(self) -> str:
        return f"{self.raft}_{self.name_in_raft}"


def _science_rafts() -> list[str]:
    return [f"R{r}{c}" for r in range(5) for c in range(5) if f"R{r}{c}" not in CORNER_RAFTS]


def _make_detectors() -> tuple[Detector, ...]:
    """Science detectors first (raft-major), then the four corner rafts, as obs_lsst."""
    sensors = [f"S{y}{x}" for y in range(3) for x in range(3)]
    dets = [Detector(0, raft, s, SCIENCE) for raft in _science_rafts() for s in sensors]
    dets += [Detector(0, raft, s, kind) for raft in CORNER_RAFTS for s, kind in _CORNER_SENSORS]
    return tuple(Detector(i, d.raft, d.name_in_raft, d.purpose) for i, d in enumerate(dets))


DETECTORS: tuple[Detector, ...] = _make_detectors()
ALL_DETECTOR_IDS: tuple[int, ...] = tuple(d.id for d in DETECTORS)


def exposure_id(day_obs: int, seq_num: int) -> int:
    """LSSTCam exposure (and one-to-one visit) id."""
    return day_obs * 100000 + seq_num


def obs_id(day_obs: int, seq_num: int) -> str:
    """LSSTCam observation id of a main-camera (MC), OCS-controlled (O) exposure."""
    return f"MC_O_{day_obs}_{seq_num:06d}"


def day_obs_of(when: datetime) -> int:
    """day_obs of an instant: the observing day rolls over at UTC-12 h."""
    return int((when.astimezone(UTC) - timedelta(hours=12)).strftime("%Y%m%d"))


def day_obs_start(day_obs: int) -> datetime:
    """The instant a day_obs begins (12:00 UTC of that date)."""
    return datetime.strptime(str(day_obs), "%Y%m%d").replace(hour=12, tzinfo=UTC)


@lru_cache(maxsize=1)
def _all_corners() -> tuple[tuple[float, float], ...]:
    return tuple(c for det in DETECTORS for c in detector_corners(det))


def focal_plane_region(ra: float, dec: float, rotation: float) -> ConvexPolygon:
    """Sky region of the whole focal plane (hull of every detector) for a pointing."""
    return sky_polygon(_all_corners(), ra, dec, rotation)


def detectors_by_id(ids: Sequence[int] | None = None) -> list[Detector]:
    """Detectors with the given ids (all of them for None), in id order."""
    if ids is None:
        return list(DETECTORS)
    unknown = sorted(set(ids) - set(ALL_DETECTOR_IDS))
    if unknown:
        raise ValueError(f"no LSSTCam detectors with ids {unknown}: ids are 0-204")
    return [DETECTORS[i] for i in sorted(set(ids))]
