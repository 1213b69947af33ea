"""Which exposures are due: their timespan ended at least the embargo period ago,
under the first embargo rule they match, and no longer ago than a lookback.

``unembargo start`` runs this on every cycle. The lookback (days, not minutes)
makes a late or missed cycle harmless: an exposure selected again is not redone,
its workflow id is the same. A selection of one day_obs needs none (``None``):
the day bounds it.

    >>> from datetime import UTC, datetime, timedelta
    >>> from unembargo.models.settings import EmbargoRule
    >>> now = datetime(2026, 1, 5, tzinfo=UTC)
    >>> [(w.lo.isoformat(), w.hi.isoformat()) for w in rule_windows(
    ...     [EmbargoRule(where="", period=timedelta(hours=80))], now, timedelta(days=30))]
    [('2025-12-06T00:00:00+00:00', '2026-01-01T16:00:00+00:00')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from astropy.time import Time
from lsst.daf.butler import Butler, DimensionRecord

from unembargo.models.exposure import Exposure
from unembargo.models.settings import EmbargoRule

# Bind names unlikely to clash with identifiers in an operator's rule.
_LO, _HI, _DAY, _IDS = "unembargo_t_lo", "unembargo_t_hi", "unembargo_day_obs", "unembargo_ids"


@dataclass(frozen=True)
class Window:
    """Exposures matching ``rule`` whose timespan ends in (lo, hi] are due; no ``lo``: by hi."""

    rule: EmbargoRule
    lo: datetime | None
    hi: datetime

    @property
    def empty(self) -> bool:
        return self.lo is not None and self.hi <= self.lo


def rule_windows(
    rules: Sequence[EmbargoRule],
    now: datetime,
    lookback: timedelta | None,
    window: timedelta | None = None,
) -> list[Window]:
    """One window per rule: from ``now - lookback`` (no lookback: from any time) to ``now - period``.

    ``window``, when given, is one embargo period for every exposure: it replaces
    the rules altogether.
    """
    if window is not None:
        rules = [EmbargoRule(where="", period=window)]
    lo = None if lookback is None else now - lookback
    return [Window(rule, lo, now - rule.period) for rule in rules]


def select_exposures(
    butler: Butler,
    instrument: str,
    rules: Sequence[EmbargoRule],
    now: datetime,
    lookback: timedelta | None,
    window: timedelta | None = None,
    day_obs: int | None = None,
) -> list[Exposure]:
    """Exposures due at ``now``, in exposure id order; each judged by the first rule it matches.

    ``lookback`` None selects however long ago an exposure ended (for one ``day_obs``).
    """
    due: dict[int, DimensionRecord] = {}
    windows = rule_windows(rules, now, lookback, window)
    earlier = [w.rule for w in windows]
    for i, win in enumerate(windows):
        if win.empty:
            continue
        found = _in_window(butler, instrument, win, day_obs)
        claimed = _matching_earlier(butler, instrument, earlier[:i], [r.id for r in found])
        due.update((r.id, r) for r in found if r.id not in claimed)
    return [_exposure(instrument, due[key]) for key in sorted(due)]


def _in_window(butler: Butler, instrument: str, win: Window, day_obs: int | None) -> list[DimensionRecord]:
    # astropy Time binds; strings do not ("Column types ... do not agree").
    terms = [f"exposure.timespan.end <= {_HI}"]
    bind: dict[str, Any] = {_HI: Time(win.hi, scale="utc")}
    if win.lo is not None:
        terms.append(f"exposure.timespan.end > {_LO}")
        bind[_LO] = Time(win.lo, scale="utc")
    if day_obs is not None:
        terms.append(f"exposure.day_obs = {_DAY}")
        bind[_DAY] = day_obs
    if win.rule.where.strip():
        terms.append(f"({win.rule.where})")
    return butler.query_dimension_records(
        "exposure",
        instrument=instrument,
        where=" AND ".join(terms),
        bind=bind,
        explain=False,
        limit=None,
    )


def _matching_earlier(
    butler: Butler, instrument: str, earlier: Iterable[EmbargoRule], ids: list[int]
) -> set[int]:
    """Ids among ``ids`` that an earlier rule matches, whatever its window.

    Asked rule by rule instead of adding ``NOT (earlier)`` to the query: a rule
    whose columns are NULL for an exposure makes ``NOT`` NULL too, which would drop
    that exposure from every later rule.
    """
    claimed: set[int] = set()
    for rule in earlier:
        remaining = [i for i in ids if i not in claimed]
        if not remaining:
            break
        if not rule.where.strip():
            return set(ids)
        found = butler.query_dimension_records(
            "exposure",
            instrument=instrument,
            where=f"exposure.id IN ({_IDS}) AND ({rule.where})",
            bind={_IDS: remaining},
            explain=False,
            limit=None,
        )
        claimed.update(r.id for r in found)
    return claimed


def _exposure(instrument: str, record: DimensionRecord) -> Exposure:
    return Exposure(
        instrument=instrument,
        day_obs=int(record.day_obs),
        obs_id=str(record.obs_id),
        exposure_id=int(record.id),
    )
