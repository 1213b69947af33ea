"""Tables of unembargo's own database (SQLite by default, PostgreSQL in production).

The schema is the migrations' (models/migrations): ``connect`` brings any database to the newest
revision of every flow's branch. Sites and data locations are in models/locations.py.

>>> from sqlmodel import Session, select
>>> engine = connect("sqlite://")
>>> with Session(engine) as s:
...     _ = upsert_location(s, DataLocation(name="slac-dest", site="SLAC", type="long_term_archive",
...         storage="disk", path="/sdf/data/rubin/raw", operations="unembargo"))
...     _ = upsert_location(s, DataLocation(name="slac-rucio", site="SLAC", type="catalogue",
...         storage="service", endpoint="https://rucio.example.org"))
...     queues = step_queues(s)
>>> queues["zip"], queues["tag"]
('slac_slac-dest_unembargo', 'slac_slac-rucio_registration')
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, create_engine

from unembargo.models.exposure import STEPS, StepQueues
from unembargo.models.locations import (
    DataLocation,
    NoLocation,
    Operation,
    Site,
    best_for,
    get_location,
    operation_queues,
    upsert_location,
)
from unembargo.models.migrations import upgrade

__all__ = ["DataLocation", "Effect", "NoLocation", "Site", "connect", "get_location", "step_queues",
           "upsert_location"]  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


class Effect(SQLModel, table=True):
    """Ledger of side effects, written just before each one is carried out.

    Counting rows per exposure and action shows whether anything was done twice.
    """

    id: int | None = Field(default=None, primary_key=True)
    obs_id: str = Field(index=True)
    step: str
    action: str
    at: datetime = Field(default_factory=_now)


def connect(url: str) -> Engine:
    """Engine for ``url``, its schema migrated to every head; SQLite waits on locks instead of failing."""
    args = {"timeout": 30} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, connect_args=args)
    upgrade(engine)
    return engine


def step_queues(session: Session, at: Sequence[str] = ()) -> StepQueues:
    """Each step's task queue: its operation's queue at the preferred active location serving it,
    or, given ``at``, at the first of those named locations that serves it (active or not)."""
    chosen = [get_location(session, name) for name in at]
    queues: StepQueues = {}
    for step, spec in STEPS.items():
        operation = Operation(spec.location)
        if at:
            serving = [loc for loc in chosen if operation in loc.served()]
            if not serving:
                raise NoLocation(f"none of {', '.join(at)} serves {operation.value} (step {step})")
            location = serving[0]
        else:
            location = best_for(session, operation)
        queues[step] = operation_queues(session, location)[operation]
    return queues
