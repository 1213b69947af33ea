"""One day of exposures as the embargo and main butlers see them, for ``unembargo reconcile``.

Every question is asked once for the whole day, never once per exposure: the day's
exposure records, which of them are past their embargo (the same rules and queries
as ``unembargo start``), the tracts their visits overlap (one spatial join), and which
exposures the main butler holds raws of. Whether those holdings are complete is
first judged on the day's totals; only when the totals disagree are the raws counted
exposure by exposure.

``reconcile --verify`` compares content the same way, many exposures per query
(``VERIFY_CHUNK``): each yaml's records with the embargo butler's, and each zip's
butler index with the main butler's datasets and the files they point at.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from lsst.daf.butler import Butler, DatasetRef, DimensionRecord, MissingDatasetTypeError
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ZipIndex
from lsst.daf.butler.transfers import YamlRepoImportBackend
from lsst.resources import ResourcePath

from unembargo.adapters.butler import RAW_TYPES, RECORD_SHAPES, Records, records_diff
from unembargo.adapters.selection import select_exposures
from unembargo.models import names
from unembargo.models.reconcile import EmbargoExposure, MainHolding
from unembargo.models.settings import EmbargoRule

_DAY = "unembargo_day_obs"
_IDS = "unembargo_ids"
# (dataset type, collections holding it) pairs in which an exposure's raws are searched.
Searches = list[tuple[str, list[str]]]


def day_exposures(
    embargo: Butler, instrument: str, day_obs: int, rules: Sequence[EmbargoRule], now: datetime
) -> dict[str, EmbargoExposure]:
    """The embargo butler's exposures of the day by obs_id: due or not, end, tracts."""
    records = embargo.query_dimension_records(
        "exposure",
        instrument=instrument,
        where=f"exposure.day_obs = {_DAY}",
        bind={_DAY: day_obs},
        explain=False,
        limit=None,
    )
    if not records:
        return {}
    due = {
        e.exposure_id
        for e in select_exposures(
            embargo, instrument, rules, now, lookback=_lookback(day_obs, now), day_obs=day_obs
        )
    }
    tracts = day_tracts(embargo, instrument, day_obs)
    periods = rule_periods(embargo, instrument, day_obs, rules, [int(r.id) for r in records])
    return {
        str(r.obs_id): EmbargoExposure(
            exposure_id=int(r.id),
            due=int(r.id) in due,
            end=_end(r),
            tracts=tuple(sorted(tracts.get(int(r.id), ()))),
            embargo_end=_plus(_end(r), periods.get(int(r.id))),
        )
        for r in records
    }


def rule_periods(
    butler: Butler, instrument: str, day_obs: int, rules: Sequence[EmbargoRule], ids: Sequence[int]
) -> dict[int, timedelta]:
    """Exposure id -> embargo period of the first rule it matches (the arrival's
    ``embargo_end``, asked once per rule for the whole day instead of once per exposure)."""
    periods: dict[int, timedelta] = {}
    for rule in rules:
        left = [i for i in ids if i not in periods]
        if not left:
            break
        if not rule.where.strip():
            periods.update((i, rule.period) for i in left)
            break
        found = butler.query_dimension_records(
            "exposure",
            instrument=instrument,
            where=f"exposure.day_obs = {_DAY} AND ({rule.where})",
            bind={_DAY: day_obs},
            explain=False,
            limit=None,
        )
        periods.update((int(r.id), rule.period) for r in found if int(r.id) not in periods)
    return periods


def day_embargo_ends(
    embargo: Butler, instrument: str, day_obs: int, rules: Sequence[EmbargoRule]
) -> dict[str, datetime | None]:
    """obs_id -> when each exposure of the day leaves embargo (``unembargo status --day``)."""
    records = embargo.query_dimension_records(
        "exposure", instrument=instrument, where=f"exposure.day_obs = {_DAY}", bind={_DAY: day_obs},
        explain=False, limit=None,
    )  # fmt: skip
    periods = rule_periods(embargo, instrument, day_obs, rules, [int(r.id) for r in records])
    return {str(r.obs_id): _plus(_end(r), periods.get(int(r.id))) for r in records}


def _plus(end: datetime | None, period: timedelta | None) -> datetime | None:
    return None if end is None or period is None else end + period


def _lookback(day_obs: int, now: datetime) -> timedelta:
    """A lookback reaching back before the day began (its date, 00:00 UTC)."""
    start = datetime.strptime(str(day_obs), "%Y%m%d").replace(tzinfo=UTC)
    return max(now - start, timedelta(0))


def _end(record: DimensionRecord) -> datetime | None:
    timespan = record.timespan
    if timespan is None or timespan.end is None:
        return None
    end: datetime = timespan.end.utc.to_datetime(timezone=UTC)
    return end


def day_tracts(butler: Butler, instrument: str, day_obs: int) -> dict[int, set[int]]:
    """Exposure id -> tracts its visits overlap: the export step's spatial join, for the whole day."""
    if not {"visit", "tract"} <= set(butler.dimensions.dimensions.names):
        return {}
    rows = butler.query_data_ids(
        ["exposure", "visit", "tract"],
        instrument=instrument,
        where=f"exposure.day_obs = {_DAY}",
        bind={_DAY: day_obs},
        explain=False,
        limit=None,
    )
    tracts: dict[int, set[int]] = {}
    for row in rows:
        tracts.setdefault(int(row["exposure"]), set()).add(int(row["tract"]))
    return tracts


def main_holdings(main: Butler, embargo: Butler, instrument: str, day_obs: int) -> dict[str, MainHolding]:
    """Exposures of the day the main butler holds raws of, by obs_id, and whether it holds all.

    All means as many raw data IDs as the embargo butler has for the exposure (a zip
    ingest is one transaction, so a shortfall means datasets were removed since).
    """
    main_searches = raw_searches(main, instrument)
    held = _held_exposures(main, main_searches, instrument, day_obs)
    if not held:
        return {}
    embargo_searches = raw_searches(embargo, instrument)
    where, bind = f"exposure.id IN ({_IDS})", {_IDS: sorted(held)}
    if _count(main, main_searches, instrument, where, bind) == _count(
        embargo, embargo_searches, instrument, where, bind
    ):
        return {obs_id: MainHolding(complete=True) for obs_id in held.values()}
    have = _per_exposure(main, main_searches, instrument, where, bind)
    want = _per_exposure(embargo, embargo_searches, instrument, where, bind)
    return {obs_id: _holding(have[eid], want[eid]) for eid, obs_id in held.items()}


def _holding(have: int, want: int) -> MainHolding:
    if have >= want:
        return MainHolding(complete=True)
    return MainHolding(complete=False, detail=f"the main butler holds {have} of its {want} raws")


def raw_searches(butler: Butler, instrument: str) -> Searches:
    """Each raw dataset type the butler knows, with the instrument's raw collections.

    Counting distinct data IDs makes a dataset seen through a chain and its run count once.
    """
    runs = list(butler.collections.query(names.raw_runs_glob(instrument)))
    if not runs:
        return []
    searches = []
    for dataset_type in RAW_TYPES:
        try:
            butler.get_dataset_type(dataset_type)
        except MissingDatasetTypeError:
            continue
        searches.append((dataset_type, runs))
    return searches


def _held_exposures(butler: Butler, searches: Searches, instrument: str, day_obs: int) -> dict[int, str]:
    """Exposure id -> obs_id of the day's exposures with any raw in ``searches``."""
    held: dict[int, str] = {}
    for dataset_type, runs in searches:
        with butler.query() as query:
            data_ids = (
                query.join_dataset_search(dataset_type, runs)
                .where(f"exposure.day_obs = {_DAY}", bind={_DAY: day_obs}, instrument=instrument)
                .data_ids(["exposure"])
                .with_dimension_records()
            )
            for data_id in data_ids:
                record = data_id.records["exposure"]
                assert record is not None, "queried with dimension records"
                held[int(record.id)] = str(record.obs_id)
    return held


def _count(butler: Butler, searches: Searches, instrument: str, where: str, bind: dict[str, Any]) -> int:
    """Raw data IDs (exposure, detector) held in ``searches`` for the exposures ``where`` selects."""
    total = 0
    for dataset_type, runs in searches:
        with butler.query() as query:
            total += (
                query.join_dataset_search(dataset_type, runs)
                .where(where, bind=bind, instrument=instrument)
                .data_ids(["exposure", "detector"])
                .count(exact=True, discard=True)
            )
    return total


def _per_exposure(
    butler: Butler, searches: Searches, instrument: str, where: str, bind: dict[str, Any]
) -> Counter[int]:
    """Like ``_count``, exposure by exposure (one row per data ID: the costly path)."""
    counts: Counter[int] = Counter()
    for dataset_type, runs in searches:
        with butler.query() as query:
            data_ids = (
                query.join_dataset_search(dataset_type, runs)
                .where(where, bind=bind, instrument=instrument)
                .data_ids(["exposure", "detector"])
            )
            counts.update(int(data_id["exposure"]) for data_id in data_ids)
    return counts


# ---------------------------------------------------------------- reconcile --verify

# Exposures whose records and datasets are asked for in one query each: bounds what a
# query returns (205 detectors and regions an exposure) while keeping round trips few.
VERIFY_CHUNK = 50


def chunk_records(embargo: Butler, instrument: str, exposure_ids: Sequence[int]) -> dict[int, Records]:
    """Exposure id -> the records its self-sufficient yaml must hold, as the export step
    collects them (``adapters.butler.collect_records``), for many exposures per query."""
    found: dict[int, Records] = {eid: {} for eid in exposure_ids}
    where, bind = f"exposure.id IN ({_IDS})", {_IDS: list(exposure_ids)}
    for shape in RECORD_SHAPES:
        if not all(name in embargo.dimensions.dimensions.names for name in shape):
            continue
        data_ids = embargo.query_data_ids(
            shape, instrument=instrument, where=where, bind=bind, with_dimension_records=True,
            explain=False, limit=None,
        )  # fmt: skip
        for data_id in data_ids:
            records = found[int(data_id["exposure"])]
            for name in data_id.dimensions.elements:
                record = data_id.records[name]
                if record is not None and record.definition.has_own_table:
                    records.setdefault(name, {}).setdefault(record.dataId, record)
    return found


def yaml_differences(path: Path, expected: Records, butler: Butler) -> list[str]:
    """How the exported yaml's records differ from ``expected``, per element ([] if none).

    Read as ``Butler.import_`` reads it (its yaml backend), without importing anything.
    """
    try:
        with open(path) as stream:
            backend = YamlRepoImportBackend(stream, butler)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
        return [f"not a readable dimension yaml ({type(err).__name__}: {str(err)[:200]})"]
    actual: Records = {
        element.name: {r.dataId: r for r in records}
        for element, records in backend.dimensions.items()
        if records
    }
    return records_diff(expected, actual)


@dataclass(frozen=True)
class HeldDataset:
    """A raw dataset of the main butler: its type and run, and the file it points at."""

    dataset_type: str
    run: str
    # Zip member the datastore reads it from (``#zip-path=``), and the zip's path.
    member: str | None
    path: str | None


def chunk_datasets(
    main: Butler, instrument: str, exposure_ids: Sequence[int]
) -> dict[int, dict[str, HeldDataset]]:
    """Exposure id -> {dataset id: what the main butler holds} of its raws, with their files."""
    searches = raw_searches(main, instrument)
    refs: list[DatasetRef] = []
    for dataset_type, runs in searches:
        refs += main.query_datasets(
            dataset_type, collections=runs, instrument=instrument, where=f"exposure.id IN ({_IDS})",
            bind={_IDS: list(exposure_ids)}, find_first=False, explain=False, limit=None,
        )  # fmt: skip
    uris = main.get_many_uris(refs, allow_missing=True) if refs else {}
    held: dict[int, dict[str, HeldDataset]] = {eid: {} for eid in exposure_ids}
    for ref in refs:
        found = uris.get(ref)
        uri = found.primaryURI if found is not None else None
        member = path = None
        if uri is not None:
            fragment = uri.fragment or ""
            member = fragment.removeprefix("zip-path=") if fragment.startswith("zip-path=") else None
            path = uri.ospath if uri.isLocal else str(uri)
        held[int(ref.dataId["exposure"])][str(ref.id)] = HeldDataset(
            ref.datasetType.name, str(ref.run), member, path
        )
    return held


def index_differences(zip_path: Path, held: dict[str, HeldDataset]) -> list[str]:
    """What differs between a zip's butler index and the main butler's datasets of its
    exposure: ids missing on either side, other runs or types, files not in this zip."""
    try:
        index = ZipIndex.from_zip_file(ResourcePath(zip_path))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        return [f"the zip has no readable butler index ({type(err).__name__})"]
    listed = {
        str(ref_id): (ref.dataset_type_name, str(ref.run)) for ref_id, ref in index.refs.compact_refs.items()
    }
    member_of = {str(ref_id): name for name, info in index.artifact_map.items() for ref_id in info.ids}
    absent = sorted(set(listed) - set(held))
    extra = sorted(set(held) - set(listed))
    problems = []
    if absent:
        problems.append(
            f"{len(absent)} dataset(s) of the zip's index are not in the main butler ({_ids(absent)})"
        )
    if extra:
        problems.append(
            f"the main butler holds {len(extra)} dataset(s) of it that the zip's index lacks ({_ids(extra)})"
        )
    wrong_kind = sorted(
        i for i in set(listed) & set(held) if listed[i] != (held[i].dataset_type, held[i].run)
    )
    if wrong_kind:
        problems.append(
            f"{len(wrong_kind)} dataset(s) have another type or run in the main butler ({_ids(wrong_kind)})"
        )
    # The datastore may record the zip's path through a symlink: compare where each path leads.
    here = zip_path.resolve()
    leads = {p: Path(p).resolve() for p in {h.path for h in held.values() if h.path is not None}}
    elsewhere = sorted(
        i for i in set(listed) & set(held)
        if (path := held[i].path) is not None and (leads[path] != here or held[i].member != member_of.get(i))
    )  # fmt: skip
    if elsewhere:
        first = held[elsewhere[0]]
        problems.append(
            f"{len(elsewhere)} dataset(s) of the main butler point at another file "
            f"(e.g. {first.path}#{first.member})"
        )
    return problems


def _ids(ids: list[str], shown: int = 3) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more
