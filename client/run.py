"""The ``unembargo start`` job as a library call: select, start, watch.

>>> result = asyncio.run(run_start(Settings(), StartRequest(window=timedelta(hours=80))))  # doctest: +SKIP
>>> result.ok  # doctest: +SKIP
True
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from unembargo.client.progress import Progress, watch
from unembargo.engine.connection import connect
from unembargo.engine.errors import SourceUnavailable
from unembargo.engine.starter import StartOutcome, settings_policy, start_exposures
from unembargo.models.exposure import Exposure, Policy
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.tables import step_queues

# Outcomes that count as success for the exit code.
GOOD = {"started", "running", "completed"}

# Exposures that ended longer ago than this are not looked at, unless a day is named.
DEFAULT_LOOKBACK = timedelta(days=30)


@dataclass(frozen=True)
class StartRequest:
    """Which exposures to select."""

    instrument: str = "LSSTCam"
    # None: each exposure's configured embargo rule decides; else this period for all.
    window: timedelta | None = None
    # None: DEFAULT_LOOKBACK, or no lookback at all for a named day (see lookback_in_force).
    lookback: timedelta | None = None
    day_obs: int | None = None
    dry_run: bool = False
    # Start a new run for exposures whose last run failed (same id, same idempotent steps).
    restart_failed: bool = False


def lookback_in_force(request: StartRequest) -> timedelta | None:
    """The lookback the selection applies: the one asked for; else none for a named day
    (the day bounds the selection, and a day older than 30 d is what was asked for);
    else DEFAULT_LOOKBACK, which keeps a periodic selection's query small."""
    if request.lookback is not None:
        return request.lookback
    return None if request.day_obs is not None else DEFAULT_LOOKBACK


@dataclass
class StartResult:
    selected: list[Exposure]
    outcomes: list[StartOutcome] = field(default_factory=list)
    finished: list[Progress] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed: every start succeeded and every watched run completed."""
        if any(o.outcome not in GOOD for o in self.outcomes):
            return False
        return all(p.status == "completed" for p in self.finished)

    def as_dict(self) -> dict[str, object]:
        status = {p.workflow_id: asdict(p) for p in self.finished}
        return {
            "ok": self.ok,
            "selected": len(self.selected),
            "exposures": [
                {
                    **asdict(o.exposure),
                    "workflow_id": o.workflow_id,
                    "outcome": o.outcome,
                    "final": status.get(o.workflow_id),
                }  # fmt: skip
                for o in self.outcomes
            ]
            or [asdict(e) for e in self.selected],
        }


def select(settings: Settings, request: StartRequest, now: datetime | None = None) -> list[Exposure]:
    """Exposures of the embargo butler whose embargo period has passed."""
    from lsst.daf.butler import Butler

    from unembargo.adapters.selection import select_exposures

    try:
        butler = Butler.from_config(settings.embargo_butler, writeable=False)
    except Exception as err:
        raise SourceUnavailable("the embargo butler", err) from err
    return select_exposures(
        butler,
        instrument=request.instrument,
        rules=settings.rules(),
        window=request.window,
        lookback=lookback_in_force(request),
        day_obs=request.day_obs,
        now=now or datetime.now(UTC),
    )


async def run_start(
    settings: Settings,
    request: StartRequest,
    wait: bool = True,
    on_update: Callable[[list[Progress]], None] | None = None,
    policy: Policy | None = None,
    on_outage: Callable[[str], None] | None = None,
) -> StartResult:
    """Select eligible exposures, start their workflows, optionally watch them finish.

    While watching, a Temporal that stops answering is waited for (``on_outage`` says so)
    up to ``settings.temporal_outage_limit``, then TemporalUnreachable.
    """
    result = StartResult(selected=await asyncio.to_thread(select, settings, request))
    if request.dry_run or not result.selected:
        return result
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    client = await connect(settings)
    result.outcomes = await start_exposures(
        client,
        settings.workflow_task_queue,
        result.selected,
        queues,
        policy or settings_policy(settings),
        restart_failed=request.restart_failed,
    )
    if wait:
        ids = [o.workflow_id for o in result.outcomes if o.outcome in ("started", "running")]
        if ids:
            result.finished = await watch(
                client,
                ids,
                on_update or (lambda rows: None),
                outage_limit=settings.temporal_outage_limit,
                on_outage=on_outage,
            )
    return result
