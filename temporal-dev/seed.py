"""Synthetic LSSTCam exposures in the embargo bucket and butler (``unembargo dev seed``).

Each exposure gets what the summit leaves behind: one small real FITS file and a
``.json`` header sidecar per detector (189 science, 8 wavefront, 8 guider), an
``<obs_id>_expectedSensors.json``, all in ``<bucket>/<prefix>LSSTCam/<day_obs>/<obs_id>/``,
then ingested in place ("direct") into the embargo butler with full dimension
records: day_obs, group, exposure and, for on-sky exposures, a visit whose region
overlaps registered tracts.

Everything about an exposure is a pure function of (day_obs, seq_num, options),
so seeding it again rewrites identical bytes and inserts nothing new, and seeding
it first with some detectors missing and later with all of them completes it.

    seed(settings, days=[0, 1, 2, 3, 4], per_day=3)   # day offsets before now
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from lsst.daf.butler import (
    Butler,
    DataCoordinate,
    DatasetIdGenEnum,
    DatasetRef,
    DatasetType,
    FileDataset,
    Timespan,
)
from lsst.resources import ResourcePath
from lsst.sphgeom import ConvexPolygon

from unembargo.adapters import camera
from unembargo.devstack import lsstcam, skymap
from unembargo.devstack.butler_repos import (
    GUIDER_RAW,
    GUIDER_RUN,
    RAW,
    RAW_RUN,
    S3Client,
    ensure_repos,
    raw_dataset_types,
    s3_client,
    use_s3_endpoint,
)
from unembargo.devstack.formatter import SyntheticRawFormatter
from unembargo.models.names import expected_sensors_name, exposure_prefix
from unembargo.models.settings import Settings

INSTRUMENT = lsstcam.INSTRUMENT
# A dimension record as insertDimensionData takes it.
Record = dict[str, Any]
# First exposure of a night starts 11 h after the day_obs rollover (23:00 UTC,
# evening in Chile); later ones follow at the survey's cadence.
NIGHT_START = timedelta(hours=11)
CADENCE = timedelta(seconds=40)
# Shutter motion and readout: the timespan ends after the open-shutter time.
_OVERHEAD_S = 0.35
UPLOAD_THREADS = 16

# Per observation type: exposure time, can_see_sky, IMGTYPE, observation_reason.
OBSERVATION_TYPES: dict[str, tuple[float, bool, str, str]] = {
    "science": (30.0, True, "OBJECT", "field_survey_science"),
    "bias": (0.0, False, "BIAS", "bias"),
    "dark": (30.0, False, "DARK", "dark"),
}
# Rafts built with ITL sensors; the other science rafts are e2v.
_ITL_RAFTS = frozenset({"R01", "R02", "R03", "R10", "R20", "R41", "R42", "R43", *lsstcam.CORNER_RAFTS})


@dataclass(frozen=True)
class ExposurePlan:
    """Everything recorded about one synthetic exposure, derived from its key."""

    day_obs: int
    seq_num: int
    observation_type: str
    physical_filter: str
    begin: datetime
    exposure_time: float
    can_see_sky: bool
    img_type: str
    observation_reason: str
    science_program: str
    target_name: str
    # Boresight and sky angle (degrees); None when the exposure is not on sky.
    ra: float | None
    dec: float | None
    sky_angle: float | None
    azimuth: float | None
    zenith_angle: float | None

    @property
    def exposure_id(self) -> int:
        return lsstcam.exposure_id(self.day_obs, self.seq_num)

    @property
    def obs_id(self) -> str:
        return lsstcam.obs_id(self.day_obs, self.seq_num)

    @property
    def dark_time(self) -> float:
        return self.exposure_time + _OVERHEAD_S

    @property
    def end(self) -> datetime:
        return self.begin + timedelta(seconds=self.dark_time)

    @property
    def group(self) -> str:
        """Group name: the ISO time the acquisition system assigned (here, the start)."""
        return self.begin.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]

    @property
    def timespan(self) -> Timespan:
        return Timespan(Time(self.begin, scale="utc"), Time(self.end, scale="utc"))

    def region(self) -> ConvexPolygon | None:
        """Sky region of the focal plane, None off sky."""
        if self.ra is None or self.dec is None or self.sky_angle is None:
            return None
        return lsstcam.focal_plane_region(self.ra, self.dec, self.sky_angle)


@dataclass(frozen=True)
class SeededExposure:
    """What seeding one exposure left in the bucket and the embargo butler."""

    day_obs: int
    seq_num: int
    exposure_id: int
    obs_id: str
    observation_type: str
    can_see_sky: bool
    begin: datetime
    end: datetime
    # S3 key prefix of the exposure folder (ends with '/') and the names written in it.
    prefix: str
    names: tuple[str, ...]
    # Detectors that have a raw (all 205 unless some were dropped on purpose).
    detectors: tuple[int, ...]
    raws: int
    guider_raws: int
    # Registered tracts the visit overlaps; empty for calibrations and off-tract visits.
    tracts: tuple[int, ...]
    seconds: float


@dataclass
class SeedReport:
    """Result of ``seed``: the exposures seeded, and how many lay after ``now``."""

    now: datetime
    exposures: list[SeededExposure] = field(default_factory=list)
    skipped_future: int = 0
    seconds: float = 0.0


def plan_exposure(
    day_obs: int, seq_num: int, observation_type: str = "science", on_tract: bool = True
) -> ExposurePlan:
    """Deterministic plan of an exposure: same arguments, same exposure, every time."""
    if observation_type not in OBSERVATION_TYPES:
        raise ValueError(f"observation_type {observation_type!r} is not one of {sorted(OBSERVATION_TYPES)}")
    exposure_time, on_sky, img_type, reason = OBSERVATION_TYPES[observation_type]
    # A string seed hashes the same in every process (unlike hash()).
    rng = random.Random(f"{day_obs}:{seq_num}")
    physical_filter = rng.choice(lsstcam.SKY_FILTERS)
    ra, dec = skymap.random_pointing(rng) if on_tract else skymap.NO_TRACT_POINTING
    angles = (rng.uniform(0.0, 360.0), rng.uniform(0.0, 360.0), rng.uniform(5.0, 55.0))
    # Off sky (calibrations): no pointing is recorded.
    sky: tuple[float | None, ...] = (ra, dec, *(round(a, 4) for a in angles)) if on_sky else (None,) * 5
    return ExposurePlan(
        day_obs=day_obs,
        seq_num=seq_num,
        observation_type=observation_type,
        physical_filter=physical_filter,
        begin=lsstcam.day_obs_start(day_obs) + NIGHT_START + (seq_num - 1) * CADENCE,
        exposure_time=exposure_time,
        can_see_sky=on_sky,
        img_type=img_type,
        observation_reason=reason,
        science_program="BLOCK-365" if on_sky else "BLOCK-T246",
        target_name=f"lowdust_{rng.randrange(1000):03d}" if on_sky else "UNKNOWN",
        ra=sky[0],
        dec=sky[1],
        sky_angle=sky[2],
        azimuth=sky[3],
        zenith_angle=sky[4],
    )


# ---------------------------------------------------------------- FITS and sidecars


def _tai(when: datetime) -> Time:
    return Time(when, scale="utc").tai


def _exposure_cards(plan: ExposurePlan) -> dict[str, Any]:
    """Primary-header cards shared by every detector of the exposure."""
    begin, end = _tai(plan.begin), _tai(plan.end)
    cards: dict[str, Any] = {
        "ORIGIN": "LSST DM Header Service",
        "TIMESYS": "TAI",
        "DATE": end.isot,
        "DATE-OBS": begin.isot,
        "DATE-BEG": begin.isot,
        "DATE-END": end.isot,
        "MJD": end.mjd,
        "MJD-OBS": begin.mjd,
        "MJD-BEG": begin.mjd,
        "MJD-END": end.mjd,
        "TELESCOP": "Rubin:Simonyi",
        "INSTRUME": INSTRUMENT,
        "CAMCODE": "MC",
        "CONTRLLR": "O",
        "DAYOBS": str(plan.day_obs),
        "SEQNUM": plan.seq_num,
        "OBSID": plan.obs_id,
        "GROUPID": plan.group,
        "IMGTYPE": plan.img_type,
        "REASON": plan.observation_reason,
        "PROGRAM": plan.science_program,
        "OBJECT": plan.target_name,
        "EXPTIME": plan.exposure_time,
        "DARKTIME": plan.dark_time,
        "SHUTTIME": plan.exposure_time,
        "FILTER": plan.physical_filter,
        "FILTBAND": lsstcam.FILTERS[plan.physical_filter],
        "RA": plan.ra,
        "DEC": plan.dec,
        "RASTART": plan.ra,
        "DECSTART": plan.dec,
        "ROTPA": plan.sky_angle,
        "ROTCOORD": "sky" if plan.can_see_sky else None,
        "AZSTART": plan.azimuth,
        "ELSTART": None if plan.zenith_angle is None else 90.0 - plan.zenith_angle,
        "SIMULATE": 0,
    }
    return {k: v for k, v in cards.items() if v is not None}


def _detector_cards(det: lsstcam.Detector) -> dict[str, Any]:
    manufacturer = "ITL" if det.raft in _ITL_RAFTS else "E2V"
    lsst_num = f"{manufacturer}-{'3800C' if manufacturer == 'ITL' else 'CCD250'}-{100 + det.id:03d}"
    return {
        "DETNAME": det.full_name,
        "RAFTBAY": det.raft,
        "CCDSLOT": det.name_in_raft,
        "LSST_NUM": lsst_num,
        "CCD_SERN": f"{24000 + det.id * 7}-10-{det.id % 9 + 1:02d}",
        "CCD_MANU": manufacturer,
        "DETTYPE": det.purpose,
    }


def _pixels(plan: ExposurePlan, det: lsstcam.Detector, file_size: int) -> np.ndarray:
    """Bias-level noise sized so the file is about ``file_size`` bytes."""
    # Headers take three 2880-byte blocks; the rest is 256-column int32 rows.
    rows = max(1, (file_size - 3 * 2880) // (4 * 256))
    rng = np.random.default_rng(plan.exposure_id * 1000 + det.id)
    return rng.integers(14000, 16000, size=(rows, 256), dtype=np.int32)


def raw_file(
    plan: ExposurePlan, det: lsstcam.Detector, file_size: int, base: Mapping[str, Any]
) -> tuple[bytes, bytes]:
    """One detector's FITS bytes and its ``.json`` sidecar (the merged header as a dict)."""
    header = fits.Header()
    header.update(base)
    header.update(_detector_cards(det))
    primary = fits.PrimaryHDU(header=header)
    image = fits.ImageHDU(_pixels(plan, det, file_size))
    # Set through the header: the ``name`` argument would upper-case it.
    image.header["EXTNAME"] = "Segment10"
    buffer = io.BytesIO()
    fits.HDUList([primary, image]).writeto(buffer)
    sidecar = {**base, **_detector_cards(det), "EXTNAME": "Segment10"}
    return buffer.getvalue(), json.dumps(sidecar, indent=1).encode()


def expected_sensors(plan: ExposurePlan, detectors: Sequence[lsstcam.Detector] = lsstcam.DETECTORS) -> bytes:
    """``<obs_id>_expectedSensors.json``: every detector the camera was asked to read."""
    body = {
        "obsid": plan.obs_id,
        "expectedSensors": {d.full_name: d.purpose for d in detectors},
    }
    return json.dumps(body, indent=1).encode()


def _raw_name(plan: ExposurePlan, det: lsstcam.Detector, as_guider_raw: bool) -> str:
    """Summit file name (without extension); guider_raw files carry a _guider suffix."""
    suffix = "_guider" if as_guider_raw else ""
    return f"{plan.obs_id}_{det.full_name}{suffix}"


# ---------------------------------------------------------------- S3


def _put(s3: S3Client, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def _upload_detector(
    s3: S3Client,
    bucket: str,
    prefix: str,
    name: str,
    payload: tuple[ExposurePlan, lsstcam.Detector, int, Mapping[str, Any]],
    cut: int | None = None,
) -> None:
    data, sidecar = raw_file(*payload)
    _put(s3, bucket, f"{prefix}{name}.fits", data if cut is None else data[:cut])
    _put(s3, bucket, f"{prefix}{name}.json", sidecar)


# ---------------------------------------------------------------- dimension records


def exposure_records(plan: ExposurePlan, detectors: Sequence[lsstcam.Detector]) -> dict[str, list[Record]]:
    """Dimension records of one exposure, by element, in insertion order."""
    common = {"instrument": INSTRUMENT}
    records: dict[str, list[Record]] = {
        "day_obs": [{**common, "id": plan.day_obs, "timespan": _day_obs_timespan(plan.day_obs)}],
        "group": [{**common, "name": plan.group}],
        "exposure": [_exposure_record(plan)],
    }
    region = plan.region()
    if region is not None:
        records.update(_visit_records(plan, region, detectors))
    return records


def _day_obs_timespan(day_obs: int) -> Timespan:
    start = lsstcam.day_obs_start(day_obs)
    return Timespan(Time(start, scale="utc"), Time(start + timedelta(days=1), scale="utc"))


def _exposure_record(plan: ExposurePlan) -> dict[str, Any]:
    return {
        "instrument": INSTRUMENT,
        "id": plan.exposure_id,
        "obs_id": plan.obs_id,
        "physical_filter": plan.physical_filter,
        "group": plan.group,
        "day_obs": plan.day_obs,
        "exposure_time": plan.exposure_time,
        "dark_time": plan.dark_time,
        "observation_type": plan.observation_type,
        "observation_reason": plan.observation_reason,
        "seq_num": plan.seq_num,
        "seq_start": plan.seq_num,
        "seq_end": plan.seq_num,
        "target_name": plan.target_name,
        "science_program": plan.science_program,
        "tracking_ra": plan.ra,
        "tracking_dec": plan.dec,
        "sky_angle": plan.sky_angle,
        "azimuth": plan.azimuth,
        "zenith_angle": plan.zenith_angle,
        "has_simulated": False,
        "can_see_sky": plan.can_see_sky,
        "timespan": plan.timespan,
    }


def _visit_records(
    plan: ExposurePlan, region: ConvexPolygon, detectors: Sequence[lsstcam.Detector]
) -> dict[str, list[Record]]:
    """One-exposure visit (id = exposure id), as defineVisits records it for LSSTCam."""
    visit = {"instrument": INSTRUMENT, "visit": plan.exposure_id}
    assert plan.ra is not None and plan.dec is not None and plan.sky_angle is not None
    return {
        "visit": [
            {
                "instrument": INSTRUMENT,
                "id": plan.exposure_id,
                "name": plan.obs_id,
                "physical_filter": plan.physical_filter,
                "day_obs": plan.day_obs,
                "seq_num": plan.seq_num,
                "exposure_time": plan.exposure_time,
                "target_name": plan.target_name,
                "observation_reason": plan.observation_reason,
                "science_program": plan.science_program,
                "azimuth": plan.azimuth,
                "zenith_angle": plan.zenith_angle,
                "region": region,
                "timespan": plan.timespan,
            }
        ],
        "visit_definition": [{**visit, "exposure": plan.exposure_id}],
        "visit_system_membership": [
            {**visit, "visit_system": system} for system in (0, lsstcam.DEFAULT_VISIT_SYSTEM)
        ],
        "visit_detector_region": [
            {
                **visit,
                "detector": d.id,
                "region": camera.detector_region(d, plan.ra, plan.dec, plan.sky_angle),
            }
            for d in detectors
        ],
    }


def _insert_records(butler: Butler, records: Mapping[str, list[Record]]) -> None:
    # skip_existing: records are deterministic, so an existing one is this one.
    with butler.transaction():
        for element, rows in records.items():
            butler.registry.insertDimensionData(element, *rows, skip_existing=True)


# ---------------------------------------------------------------- ingest


def _file_dataset(
    dataset_type: DatasetType, run: str, plan: ExposurePlan, det: lsstcam.Detector, uri: str
) -> FileDataset:
    data_id = DataCoordinate.standardize(
        instrument=INSTRUMENT,
        detector=det.id,
        exposure=plan.exposure_id,
        dimensions=dataset_type.dimensions,
    )
    # Same data ID and run, same UUID: re-ingesting is recognised, as obs_base does for raws.
    ref = DatasetRef(dataset_type, data_id, run, id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN)
    return FileDataset(path=ResourcePath(uri), refs=[ref], formatter=SyntheticRawFormatter)


@contextmanager
def _embargo_butler(settings: Settings, butler: Butler | None) -> Iterator[Butler]:
    if butler is not None:
        yield butler
        return
    with Butler.from_config(settings.embargo_butler, writeable=True) as opened:
        yield opened


# ---------------------------------------------------------------- public


def seed_exposure(
    settings: Settings,
    day_obs: int,
    seq_num: int,
    *,
    observation_type: str = "science",
    on_tract: bool = True,
    detectors: Collection[int] | None = None,
    guiders_as: str = RAW,
    extra_objects: Mapping[str, bytes] | None = None,
    file_size: int = 64 * 1024,
    expected: Collection[int] | None = None,
    cut_raws: Mapping[int, int] | None = None,
    butler: Butler | None = None,
    s3: S3Client | None = None,
    ingest: bool = True,
) -> SeededExposure:
    """Write one exposure's folder to the embargo bucket and ingest it in place.

    ``detectors`` limits the raws written (the expectedSensors file still lists all
    205 unless ``expected`` says otherwise): an incomplete exposure.
    ``guiders_as=GUIDER_RAW`` records the 8 guider files as dataset type
    ``guider_raw`` in ``LSSTCam/raw/guider`` (as real registries do) instead of
    ``raw``. ``extra_objects`` adds objects under the folder by relative name
    (spaces, unicode, ...); they are never ingested. ``on_tract=False`` points the
    visit where no tract is registered. ``expected`` limits the detectors the
    expectedSensors file lists (all 205 by default), so a small exposure can be
    complete. ``cut_raws`` cuts a detector's FITS to that many bytes (0: an empty
    object) before it is ingested, as a transfer that broke off leaves it. The
    repos must exist (``ensure_repos``). ``ingest=False`` only uploads the folder, as
    the summit does: the arrivals flow (bucket notifications) ingests it.
    """
    if guiders_as not in (RAW, GUIDER_RAW):
        raise ValueError(f"guiders_as must be {RAW!r} or {GUIDER_RAW!r}, not {guiders_as!r}")
    started = time.monotonic()
    use_s3_endpoint(settings)
    plan = plan_exposure(day_obs, seq_num, observation_type, on_tract)
    dets = lsstcam.detectors_by_id(None if detectors is None else list(detectors))
    prefix = exposure_prefix(settings.s3_prefix, INSTRUMENT, day_obs, plan.obs_id)
    listed = lsstcam.detectors_by_id(None if expected is None else list(expected))
    folder = _Folder(dets, listed, extra_objects or {}, cut_raws or {})
    names = _upload_folder(settings, s3, plan, folder, prefix, guiders_as, file_size)
    if ingest:
        with _embargo_butler(settings, butler) as b:
            _insert_records(b, exposure_records(plan, dets))
            datasets = _file_datasets(b, settings, plan, dets, prefix, guiders_as)
            b.ingest(*datasets, transfer="direct", skip_existing=True)
        n_guider = sum(1 for d in datasets if d.refs[0].datasetType.name == GUIDER_RAW)
        n_raws = len(datasets) - n_guider
    else:
        n_guider = sum(1 for d in dets if guiders_as == GUIDER_RAW and d.purpose == lsstcam.GUIDER)
        n_raws = len(dets) - n_guider
    region = plan.region()
    return SeededExposure(
        day_obs=day_obs,
        seq_num=seq_num,
        exposure_id=plan.exposure_id,
        obs_id=plan.obs_id,
        observation_type=observation_type,
        can_see_sky=plan.can_see_sky,
        begin=plan.begin,
        end=plan.end,
        prefix=prefix,
        names=tuple(sorted(names)),
        detectors=tuple(d.id for d in dets),
        raws=n_raws,
        guider_raws=n_guider,
        tracts=() if region is None else skymap.overlapping_tracts(region),
        seconds=time.monotonic() - started,
    )


@dataclass(frozen=True)
class _Folder:
    """What goes into an exposure folder besides the plan's own headers."""

    detectors: Sequence[lsstcam.Detector]
    expected: Sequence[lsstcam.Detector]
    extra_objects: Mapping[str, bytes]
    cut_raws: Mapping[int, int]


def _upload_folder(
    settings: Settings,
    s3: S3Client | None,
    plan: ExposurePlan,
    folder: _Folder,
    prefix: str,
    guiders_as: str,
    file_size: int,
) -> list[str]:
    """Upload raws, sidecars, expectedSensors and extras in parallel; return the names."""
    client = s3 if s3 is not None else s3_client(settings)
    bucket = settings.s3_bucket
    base = _exposure_cards(plan)
    names: list[str] = []
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        futures = []
        for det in folder.detectors:
            name = _raw_name(plan, det, guiders_as == GUIDER_RAW and det.purpose == lsstcam.GUIDER)
            names += [f"{name}.fits", f"{name}.json"]
            payload = (plan, det, file_size, base)
            cut = folder.cut_raws.get(det.id)
            futures.append(pool.submit(_upload_detector, client, bucket, prefix, name, payload, cut))
        expected = expected_sensors(plan, folder.expected)
        extras = {expected_sensors_name(plan.obs_id): expected, **folder.extra_objects}
        for name, body in extras.items():
            names.append(name)
            futures.append(pool.submit(_put, client, bucket, f"{prefix}{name}", body))
        for future in futures:
            future.result()
    return names


def _file_datasets(
    butler: Butler,
    settings: Settings,
    plan: ExposurePlan,
    dets: Sequence[lsstcam.Detector],
    prefix: str,
    guiders_as: str,
) -> list[FileDataset]:
    raw_type, guider_type = raw_dataset_types(butler)
    datasets = []
    for det in dets:
        as_guider = guiders_as == GUIDER_RAW and det.purpose == lsstcam.GUIDER
        dataset_type, run = (guider_type, GUIDER_RUN) if as_guider else (raw_type, RAW_RUN)
        uri = f"s3://{settings.s3_bucket}/{prefix}{_raw_name(plan, det, as_guider)}.fits"
        datasets.append(_file_dataset(dataset_type, run, plan, det, uri))
    return datasets


def observation_type_for(seq_num: int, per_day: int) -> str:
    """Afternoon calibrations open a night of three or more: a bias, then a dark."""
    if per_day >= 3 and seq_num <= 2:
        return ("bias", "dark")[seq_num - 1]
    return "science"


def seed(
    settings: Settings,
    days: list[int],
    per_day: int,
    file_size: int = 64 * 1024,
    now: datetime | None = None,
    *,
    guiders_as: str = RAW,
) -> SeedReport:
    """Seed ``per_day`` exposures on each day ``days`` (offsets: 0 = the day_obs of now).

    Exposures that would end after ``now`` are skipped (counted), so the seeded
    embargo looks like one observed up to ``now``: those ending more than the
    embargo period before ``now`` are due, the others are not yet.
    """
    if any(d < 0 for d in days) or per_day < 0:
        raise ValueError(f"days must be offsets >= 0 and per_day >= 0, got {days} and {per_day}")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    started = time.monotonic()
    report = SeedReport(now=now)
    ensure_repos(settings)
    client = s3_client(settings)
    with Butler.from_config(settings.embargo_butler, writeable=True) as butler:
        for offset in sorted(set(days)):
            day_obs = lsstcam.day_obs_of(now - timedelta(days=offset))
            for seq_num in range(1, per_day + 1):
                kind = observation_type_for(seq_num, per_day)
                if plan_exposure(day_obs, seq_num, kind).end > now:
                    report.skipped_future += 1
                    continue
                report.exposures.append(
                    seed_exposure(
                        settings,
                        day_obs,
                        seq_num,
                        observation_type=kind,
                        guiders_as=guiders_as,
                        file_size=file_size,
                        butler=butler,
                        s3=client,
                    )
                )
    report.seconds = time.monotonic() - started
    return report


# ---------------------------------------------------------------- arrivals (notifications)

# Exposures `dev seed` sends through the arrivals flow: a bias (free at once) and a science
# exposure (free after its embargo period) of a day two days back, with seq numbers clear
# of those `seed` writes directly.
ARRIVAL_DAY_OFFSET = 2
ARRIVAL_EXPOSURES = ((101, "bias"), (102, "science"))


def seed_arrivals(
    settings: Settings,
    url: str,
    secret: str,
    now: datetime | None = None,
    exposures: Sequence[tuple[int, str]] = ARRIVAL_EXPOSURES,
    file_size: int = 64 * 1024,
) -> list[SeededExposure]:
    """Upload exposures as the summit does and post their bucket notifications to ``url``.

    Nothing is ingested here: the arrival workflows do it, and start each exposure's
    unembargo workflow at its embargo end.
    """
    from unembargo.devstack.notify import post_folder

    now = (now or datetime.now(UTC)).astimezone(UTC)
    ensure_repos(settings)
    day_obs = lsstcam.day_obs_of(now - timedelta(days=ARRIVAL_DAY_OFFSET))
    seeded = []
    for seq_num, kind in exposures:
        exp = seed_exposure(
            settings, day_obs, seq_num, observation_type=kind, file_size=file_size, ingest=False
        )
        refused = [p for p in post_folder(settings, url, secret, exp.prefix) if p.status != 200]
        if refused:
            raise RuntimeError(f"{len(refused)} notification(s) of {exp.obs_id} refused: {refused[0]}")
        seeded.append(exp)
    return seeded
