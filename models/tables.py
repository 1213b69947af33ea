"""Tables of unembargo's own database (SQLite by default, PostgreSQL in production).

>>> from sqlmodel import Session, select
>>> engine = connect("sqlite://")
>>> with Session(engine) as s:
...     s.add(Site(name="SLAC")); s.add(Location(name="slac-dest", site="SLAC",
...         kind="destination", storage="/sdf/data/rubin/raw")); s.commit()
...     [loc.name for loc in s.exec(select(Location))]
['slac-dest']
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select

from unembargo.models.exposure import STEPS, StepQueues
from unembargo.models.names import location_queue


def _now() -> datetime:
    return datetime.now(UTC)


class Site(SQLModel, table=True):
    """A facility that hosts locations (e.g. the summit, SLAC)."""

    name: str = Field(primary_key=True)
    description: str = ""


class Location(SQLModel, table=True):
    """Storage or a service at a site; its workers poll the location's task queue.

    ``kind`` says which steps it serves (each step's ``location`` in its flow's table); the active
    location with the highest priority of a kind gets that kind's steps.
    """

    name: str = Field(primary_key=True)
    site: str = Field(foreign_key="site.name")
    kind: str = Field(index=True)
    storage: str
    priority: int = 0
    active: bool = True


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
    """Engine for ``url`` with the tables created; SQLite waits on locks instead of failing."""
    args = {"timeout": 30} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, connect_args=args)
    SQLModel.metadata.create_all(engine)
    return engine


class NoLocation(LookupError):
    """No active location of a kind some step needs, or an unknown location name."""


def get_location(session: Session, name: str) -> Location:
    """The location named ``name``, or NoLocation listing the known ones."""
    found = session.get(Location, name)
    if found is None:
        known = ", ".join(loc.name for loc in session.exec(select(Location))) or "none"
        raise NoLocation(f"no location {name!r} (known: {known}); add it with `unembargo locations add`")
    return found


def step_queues(session: Session) -> StepQueues:
    """Each step's task queue: that of the best active location of the kind it needs."""
    queues: StepQueues = {}
    for step, spec in STEPS.items():
        kind = spec.location
        best = session.exec(
            select(Location)
            .where(Location.kind == kind, Location.active == True)  # noqa: E712 - SQL expression
            .order_by(Location.priority.desc(), Location.name)  # type: ignore[attr-defined]
        ).first()
        if best is None:
            raise NoLocation(f"no active location of kind {kind!r} for step {step!r}")
        queues[step] = location_queue(best.name)
    return queues


def upsert_location(session: Session, location: Location) -> None:
    """Create or update a location (and its site)."""
    if session.get(Site, location.site) is None:
        session.add(Site(name=location.site))
    session.merge(location)
    session.commit()
