"""Raws into the embargo butler as they arrive: headers -> dimension records -> direct ingest.

The bucket is the truth: each raw's primary and first extension headers (one ranged
read) give its exposure's records and its detector, and the file is ingested in place
(transfer "direct", the dataset id derived from data ID and run, so an ingested raw is
recognised, never added twice). One file's failure never drops the others: a batch
that fails is ingested again file by file, and each file gets its own outcome.

The records are what the local stack's seeder writes (temporal-dev/seed.py) and what
obs_lsst's translator gives for LSSTCam; tests/unit/test_arrival_records.py compares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from astro_metadata_translator import merge_headers
from astropy.time import Time
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable
from lsst.daf.butler import (
    Butler,
    DataCoordinate,
    DatasetIdGenEnum,
    DatasetRef,
    FileDataset,
    Timespan,
)
from lsst.resources import ResourcePath

from unembargo.adapters import camera
from unembargo.adapters.headers import _data_size, _header_end, _padded, _parse, _plain, _structural
from unembargo.adapters.s3 import S3Client, list_folder
from unembargo.models import names
from unembargo.models.arrival import (
    ALREADY,
    FAILED,
    INGESTED,
    UNREADABLE,
    EmbargoReceipt,
    ExpectedReceipt,
    ExposureFacts,
    FileOutcome,
    IngestBatchInput,
    IngestBatchReceipt,
    MalformedKey,
    VisitReceipt,
    parse_key,
)
from unembargo.models.errors import SourceMismatch
from unembargo.models.settings import EmbargoRule

RAW, GUIDER_RAW = "raw", "guider_raw"
# One ranged read holds the primary and first extension headers of a raw.
HEADER_BYTES = 64 * 1024
# The observing day of LSSTCam rolls over at 12:00 UTC.
DAY_OBS_OFFSET = timedelta(hours=12)
# IMGTYPE -> observation_type, and whether the type sees the sky (obs_lsst's rules, reduced).
_TYPES = {"OBJECT": "science", "BIAS": "bias", "DARK": "dark", "FLAT": "flat", "ACQ": "acq"}
_OFF_SKY = frozenset({"BIAS", "DARK", "FLAT", "SPOT"})
# Reasons never carry more than this (they land in history).
_REASON = 200
# S3 errors that mean "not there (yet)": the file is read again later.
_ABSENT = frozenset({"NoSuchKey", "404", "NotFound", "InvalidRange"})


def run_of(instrument: str, dataset_type: str) -> str:
    return f"{instrument}/raw/{'guider' if dataset_type == GUIDER_RAW else 'all'}"


def list_names(s3: S3Client, bucket: str, prefix: str) -> list[str]:
    """Names (relative to the folder) of every object in an exposure folder."""
    return [
        obj.key[len(prefix) :] for obj in list_folder(s3, bucket, prefix) if "/" not in obj.key[len(prefix) :]
    ]


def day_listing(
    s3: S3Client, bucket: str, s3_prefix: str, instrument: str, day_obs: int
) -> dict[tuple[str, int, str], list[str]]:
    """(instrument, day_obs, obs_id) -> object names, for every exposure folder of a day.

    Keys that are not ``<instrument>/<day>/<obs_id>/<file>`` (deeper, unsafe names) are left
    out: nothing is ever signalled for them.
    """
    found: dict[tuple[str, int, str], list[str]] = {}
    for obj in list_folder(s3, bucket, names.day_prefix(s3_prefix, instrument, day_obs)):
        try:
            ev = parse_key(s3_prefix, obj.key)
        except MalformedKey:
            continue
        found.setdefault((ev.instrument, ev.day_obs, ev.obs_id), []).append(ev.name)
    return found


def read_expected(s3: S3Client, bucket: str, key: str) -> ExpectedReceipt:
    """Detector full names an expectedSensors file lists; None (with why) if not readable."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if _code(err) in _ABSENT:
            return ExpectedReceipt(None, "not readable yet (no such object)")
        raise
    try:
        listed = json.loads(body)["expectedSensors"]
        if not isinstance(listed, dict) or not all(isinstance(k, str) for k in listed):
            raise TypeError("expectedSensors is not an object of detector names")
    except (ValueError, KeyError, TypeError) as err:
        return ExpectedReceipt(None, f"malformed expectedSensors file ({type(err).__name__})")
    return ExpectedReceipt(sorted(listed))


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def read_header(s3: S3Client, bucket: str, key: str, name: str) -> dict[str, Any]:
    """Primary header merged with the first extension's, as raw ingest reads them."""
    data = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{HEADER_BYTES - 1}")["Body"].read()
    try:
        return _headers(name, data)
    except SourceMismatch:
        if len(data) < HEADER_BYTES:
            raise
    # Headers longer than the first read: read the whole object.
    return _headers(name, s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _headers(name: str, data: bytes) -> dict[str, Any]:
    if not data.startswith(b"SIMPLE  ="):
        raise SourceMismatch(f"raw {name} does not start with a FITS primary header")
    cards_end, data_start = _header_end(name, data, 0, 0)
    primary = _parse(name, data[:cards_end], 0)
    headers = [_plain(primary)]
    pos = data_start + _padded(_data_size(name, _structural(data[:cards_end]), 0))
    if primary.get("EXTEND") and data.startswith(b"XTENSION", pos):
        ext_end, _ = _header_end(name, data, pos, 1)
        headers.append(_plain(_parse(name, data[pos:ext_end], 1)))
    return dict(merge_headers(headers, mode="overwrite"))


def _time(header: Mapping[str, Any], key: str) -> Time:
    scale = str(header.get("TIMESYS", "UTC")).lower()
    return Time(header[key], scale=scale if scale in ("tai", "utc") else "utc").utc


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _round(value: Any) -> float | None:
    # 90 - elevation, to a nanodegree: keeps the zenith angle the header's elevation came from.
    return None if value is None else round(float(value), 9)


def exposure_records(instrument: str, header: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """day_obs, group and exposure records of a raw's exposure, from its headers."""
    try:
        day_obs = int(header["DAYOBS"])
        seq_num = int(header["SEQNUM"])
        img_type = str(header["IMGTYPE"]).upper()
        begin, end = _time(header, "DATE-BEG"), _time(header, "DATE-END")
        group = str(header["GROUPID"])
    except (KeyError, ValueError) as err:
        raise SourceMismatch(f"header lacks a usable {err} card; re-send the raw") from None
    start = datetime.strptime(str(day_obs), "%Y%m%d").replace(tzinfo=UTC) + DAY_OBS_OFFSET
    elevation = header.get("ELSTART")
    exposure = {
        "instrument": instrument,
        "id": day_obs * 100000 + seq_num,
        "obs_id": str(header["OBSID"]),
        "physical_filter": str(header["FILTER"]),
        "group": group,
        "day_obs": day_obs,
        "exposure_time": float(header["EXPTIME"]),
        "dark_time": float(header.get("DARKTIME", header["EXPTIME"])),
        "observation_type": _TYPES.get(img_type, img_type.lower()),
        "observation_reason": header.get("REASON"),
        "seq_num": seq_num,
        "seq_start": seq_num,
        "seq_end": seq_num,
        "target_name": header.get("OBJECT"),
        "science_program": header.get("PROGRAM"),
        "tracking_ra": _float(header.get("RA")),
        "tracking_dec": _float(header.get("DEC")),
        "sky_angle": _float(header.get("ROTPA")),
        "azimuth": _float(header.get("AZSTART")),
        "zenith_angle": None if elevation is None else _round(90.0 - float(elevation)),
        "has_simulated": bool(header.get("SIMULATE", 0)),
        "can_see_sky": img_type not in _OFF_SKY,
        "timespan": Timespan(begin, end),
    }
    return {
        "day_obs": [
            {
                "instrument": instrument,
                "id": day_obs,
                "timespan": Timespan(Time(start, scale="utc"), Time(start + timedelta(days=1), scale="utc")),
            }
        ],
        "group": [{"instrument": instrument, "name": group}],
        "exposure": [exposure],
    }


class _Prepared:
    """A raw ready to ingest, or why it is not."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcome: FileOutcome | None = None
        self.dataset: FileDataset | None = None
        self.detector: str | None = None
        self.records: dict[str, list[dict[str, Any]]] | None = None


def ingest_batch(
    butler: Butler,
    s3: S3Client,
    bucket: str,
    s3_prefix: str,
    inp: IngestBatchInput,
    checkpoint: Callable[[str], None] = lambda point: None,
) -> IngestBatchReceipt:
    """Ingest the raws named in place; each file gets its own outcome."""
    prefix = names.exposure_prefix(s3_prefix, inp.instrument, inp.day_obs, inp.obs_id)
    detectors = {
        str(r.full_name): int(r.id)
        for r in butler.query_dimension_records("detector", instrument=inp.instrument)
    }
    types = {t: butler.get_dataset_type(t) for t in (RAW, GUIDER_RAW)}
    prepared = [_prepare(s3, bucket, prefix, inp, name, detectors, types) for name in inp.names]
    facts: ExposureFacts | None = None
    for p in prepared:
        if p.records is not None:
            exp = p.records["exposure"][0]
            facts = ExposureFacts(int(exp["id"]), bool(exp["can_see_sky"]), str(exp["observation_type"]))
            break
    ready = [p for p in prepared if p.dataset is not None]
    checkpoint("acting")
    if ready:
        try:
            _ingest(butler, ready, inp.raw_formatter)
        except Exception:  # noqa: BLE001 - find which file it was: one by one
            for p in ready:
                try:
                    _ingest(butler, [p], inp.raw_formatter)
                except Exception as err:  # noqa: BLE001 - recorded by name
                    if _outage(err):
                        raise  # the storage or registry is down, not this file: retried
                    p.outcome = FileOutcome(p.name, FAILED, p.detector, _reason(err))
    checkpoint("acted")
    return IngestBatchReceipt([p.outcome or FileOutcome(p.name, FAILED) for p in prepared], facts)


def _ingest(butler: Butler, ready: Sequence[_Prepared], formatter: str) -> None:
    with butler.transaction():
        for p in ready:
            assert p.records is not None
            for element, rows in p.records.items():
                butler.registry.insertDimensionData(element, *rows, skip_existing=True)
    todo = []
    for p in ready:
        assert p.dataset is not None
        ref = p.dataset.refs[0]
        # "Already ingested" is success (a replayed batch, a worker killed after the ingest).
        if butler.get_dataset(ref.id) is not None:
            p.outcome = FileOutcome(p.name, ALREADY, p.detector)
            continue
        todo.append(p)
    if todo:
        butler.ingest(
            *(FileDataset(p.dataset.path, p.dataset.refs, formatter=formatter) for p in todo if p.dataset),
            transfer="direct",
            skip_existing=True,
        )
    for p in todo:
        p.outcome = FileOutcome(p.name, INGESTED, p.detector)


def _prepare(
    s3: S3Client,
    bucket: str,
    prefix: str,
    inp: IngestBatchInput,
    name: str,
    detectors: Mapping[str, int],
    types: Mapping[str, Any],
) -> _Prepared:
    p = _Prepared(name)
    key = f"{prefix}{name}"
    try:
        header = read_header(s3, bucket, key, name)
    except ClientError as err:
        if _code(err) in _ABSENT:
            p.outcome = FileOutcome(name, UNREADABLE, reason="no such object (yet)")
            return p
        raise
    except SourceMismatch as err:
        p.outcome = FileOutcome(name, FAILED, reason=_reason(err))
        return p
    try:
        records = exposure_records(inp.instrument, header)
        detector = str(header["DETNAME"])
    except (SourceMismatch, KeyError, ValueError, TypeError) as err:
        p.outcome = FileOutcome(name, FAILED, reason=_reason(err))
        return p
    exp = records["exposure"][0]
    if exp["obs_id"] != inp.obs_id or int(exp["day_obs"]) != inp.day_obs:
        p.outcome = FileOutcome(
            name,
            FAILED,
            detector,
            f"headers say {exp['obs_id']} of {exp['day_obs']}, not this folder's exposure",
        )
        return p
    if detector not in detectors:
        p.outcome = FileOutcome(name, FAILED, detector, f"detector {detector!r} is not in the registry")
        return p
    guider = str(header.get("DETTYPE", "")).upper() == "GUIDER" and name.rsplit(".", 1)[0].endswith("_guider")
    dataset_type = types[GUIDER_RAW if guider else RAW]
    data_id = DataCoordinate.standardize(
        instrument=inp.instrument, detector=detectors[detector], exposure=exp["id"],
        dimensions=dataset_type.dimensions,
    )  # fmt: skip
    # Same data ID and run, same UUID: an ingested raw is recognised, as obs_base does.
    ref = DatasetRef(
        dataset_type, data_id, run_of(inp.instrument, dataset_type.name),
        id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN,
    )  # fmt: skip
    p.records, p.detector = records, detector
    p.dataset = FileDataset(path=ResourcePath(f"s3://{bucket}/{key}"), refs=[ref])
    return p


def _outage(err: BaseException) -> bool:
    """Whether ``err`` says a service did not answer (every file would fail alike), so the
    batch is retried with backoff instead of its files being recorded as failed."""
    return isinstance(err, (EndpointUnreachable, HTTPClientError, ConnectionError, TimeoutError))


def _reason(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= _REASON else text[: _REASON - 3] + "..."


def define_visit(butler: Butler, instrument: str, exposure_id: int) -> VisitReceipt:
    """The one-to-one visit of an on-sky exposure, as defineVisits records it; idempotent."""
    (exp,) = butler.query_dimension_records("exposure", instrument=instrument, exposure=exposure_id)
    if not exp.can_see_sky or exp.tracking_ra is None or exp.sky_angle is None:
        return VisitReceipt(None, 0, already_done=True)
    (inst,) = butler.query_dimension_records("instrument", instrument=instrument)
    placed = [
        camera.Placed(int(r.id), str(r.raft), str(r.name_in_raft), str(r.purpose))
        for r in butler.query_dimension_records("detector", instrument=instrument)
    ]
    read = {
        int(ref.dataId["detector"])
        for dataset_type in (RAW, GUIDER_RAW)
        for ref in butler.query_datasets(
            dataset_type, collections=f"{instrument}/raw/*", instrument=instrument,
            exposure=exposure_id, find_first=False, explain=False, limit=None,
        )
    }  # fmt: skip
    ra, dec, angle = float(exp.tracking_ra), float(exp.tracking_dec), float(exp.sky_angle)
    existing = butler.query_dimension_records(
        "visit", instrument=instrument, visit=exposure_id, explain=False
    )
    visit = {"instrument": instrument, "visit": exposure_id}
    records: dict[str, list[dict[str, Any]]] = {
        "visit": [
            {
                "instrument": instrument,
                "id": exposure_id,
                "name": exp.obs_id,
                "physical_filter": exp.physical_filter,
                "day_obs": exp.day_obs,
                "seq_num": exp.seq_num,
                "exposure_time": exp.exposure_time,
                "target_name": exp.target_name,
                "observation_reason": exp.observation_reason,
                "science_program": exp.science_program,
                "azimuth": exp.azimuth,
                "zenith_angle": exp.zenith_angle,
                "region": camera.focal_plane_region(placed, ra, dec, angle),
                "timespan": exp.timespan,
            }
        ],
        "visit_definition": [{**visit, "exposure": exposure_id}],
        "visit_system_membership": [
            {**visit, "visit_system": system} for system in sorted({0, int(inst.visit_system)})
        ],
        "visit_detector_region": [
            {**visit, "detector": d.id, "region": camera.detector_region(d, ra, dec, angle)}
            for d in placed
            if d.id in read
        ],
    }
    with butler.transaction():
        for element, rows in records.items():
            butler.registry.insertDimensionData(element, *rows, skip_existing=True)
    return VisitReceipt(exposure_id, len(read), already_done=bool(existing))


def embargo_end(
    butler: Butler, instrument: str, exposure_id: int, rules: Sequence[EmbargoRule]
) -> EmbargoReceipt:
    """The end of the exposure's timespan plus the period of the first rule it matches."""
    (exp,) = butler.query_dimension_records("exposure", instrument=instrument, exposure=exposure_id)
    ended = exp.timespan.end.utc.to_datetime(timezone=UTC)
    for i, rule in enumerate(rules):
        if rule.where.strip():
            where = f"exposure.id = unembargo_id AND ({rule.where})"
            hit = butler.query_dimension_records(
                "exposure", instrument=instrument, where=where, bind={"unembargo_id": exposure_id},
                explain=False,
            )  # fmt: skip
            if not hit:
                continue
        return EmbargoReceipt((ended + rule.period).isoformat(), rule.period.total_seconds(), i)
    raise SourceMismatch(f"exposure {exp.obs_id} matches no embargo rule; add a catch-all rule")
