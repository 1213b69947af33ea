"""One day of exposures as the embargo and main butlers see them, for ``unembargo reconcile``.

Every question is asked once for the whole day, never once per exposure: the day's
exposure records, which of them are past their embargo (the same rules and queries
as ``unembargo start``), the tracts their visits overlap (one spatial join), and which
exposures the main butler holds raws of. Whether those holdings are complete is
first judged on the day's totals; only when the totals disagree are the raws counted
exposure by exposure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from lsst.daf.butler import Butler, DimensionRecord, MissingDatasetTypeError

from unembargo.adapters.butler import RAW_TYPES
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
