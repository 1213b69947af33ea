"""The flows the page shows, each from the names its own model declares, and the visibility
queries that count and list their units.

Counts are COUNT queries and lists one page of a listing, never a scan of every workflow,
so a flow of 10,000 units costs what a flow of ten does.

    >>> flow("unembargo").base_query()
    'WorkflowType IN ("UnembargoExposure")'
    >>> flow("carousel").state_clause("waiting")
    'ExecutionStatus = "Running" AND (carousel_status = "WaitingOperator")'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from unembargo.models import arrival, carousel, ccat, exposure, fits_flow, names, rawintegrity
from unembargo.models.names import SA_CAROUSEL_STATUS, SA_DAY_OBS, SA_INSTRUMENT, SA_STEP

# What a unit may be doing, as the page's filters and counts name it.
RUNNING, WAITING, FAILED, DONE, ALL = "running", "waiting", "failed", "done", "all"
STATES = (RUNNING, WAITING, FAILED, DONE, ALL)
# The query each flow's unit workflow answers with its state (workflows/*.py).
STATE_QUERY = fits_flow.STATE_QUERY
# Closed runs that did not complete: each is a unit someone has to look at.
UNSUCCESSFUL = ("Failed", "TimedOut", "Terminated", "Canceled")


@dataclass(frozen=True)
class Wait:
    """A running unit that waits on purpose: for what, and the keyword attribute that says so."""

    reason: str
    attribute: str
    value: str

    @property
    def clause(self) -> str:
        return f'{self.attribute} = "{self.value}"'

    def holds(self, attributes: Mapping[str, object]) -> bool:
        """Whether a run with these search attributes waits so."""
        return str(attributes.get(self.attribute)) == self.value


@dataclass(frozen=True)
class Flow:
    """One flow: the workflow types of its units, its `step` values in order, why a unit waits."""

    name: str
    unit: str
    types: tuple[str, ...]
    steps: tuple[str, ...]
    # A step value that means "waiting", and why; or a clause (carousel's operator status).
    waiting_steps: Mapping[str, str] = field(default_factory=dict)
    waiting_clause: Wait | None = None
    # Activity name -> step, for a unit's timeline.
    step_of_activity: Mapping[str, str] = field(default_factory=dict)
    # Whether the units carry day_obs and instrument (the exposures' search attributes).
    has_day: bool = False
    has_instrument: bool = False
    # The query a running unit answers with its state (every flow's unit but ccat's).
    state_query: str | None = STATE_QUERY

    def base_query(self) -> str:
        kinds = ", ".join(f'"{t}"' for t in self.types)
        return f"WorkflowType IN ({kinds})"

    def waiting_reason(self, step: str) -> str | None:
        """Why a running unit at ``step`` waits, if that step is a wait."""
        return self.waiting_steps.get(step)

    @property
    def can_wait(self) -> bool:
        return bool(self.waiting_steps) or self.waiting_clause is not None

    def state_clause(self, state: str) -> str | None:
        """The visibility clause of units in ``state``: '' for all, None when none can be in it."""
        if state == ALL:
            return ""
        if state == DONE:
            return 'ExecutionStatus = "Completed"'
        if state == FAILED:
            return "ExecutionStatus IN (" + ", ".join(f'"{s}"' for s in UNSUCCESSFUL) + ")"
        if state not in (RUNNING, WAITING):
            raise ValueError(f"state {state!r}: use one of {', '.join(STATES)}")
        running = 'ExecutionStatus = "Running"'
        waits = [f'{SA_STEP.name} = "{s}"' for s in self.waiting_steps]
        if self.waiting_clause is not None:
            waits.append(self.waiting_clause.clause)
        if not waits:
            return running if state == RUNNING else None
        either = " OR ".join(waits)
        if state == WAITING:
            return f"{running} AND ({either})"
        nots = [f'{SA_STEP.name} != "{s}"' for s in self.waiting_steps]
        if self.waiting_clause is not None:
            nots.append(f'{self.waiting_clause.attribute} != "{self.waiting_clause.value}"')
        return f"{running} AND " + " AND ".join(nots)

    def query(
        self,
        state: str = ALL,
        step: str | None = None,
        day: int | None = None,
        instrument: str | None = None,
    ) -> str | None:
        """The units of this flow in ``state``, optionally at one step, day and instrument;
        None when no unit can match (waiting at a step that is no wait, running at one that is)."""
        parts = [self.base_query()]
        if step and state == RUNNING and step in self.waiting_steps:
            return None
        if step and state == WAITING and step not in self.waiting_steps and self.waiting_clause is None:
            return None
        if step:
            parts.append(f'{SA_STEP.name} = "{names.check_name("step", step)}"')
        if day is not None:
            parts.append(f"{SA_DAY_OBS.name} = {names.check_day_obs(day)}")
        if instrument:
            parts.append(f'{SA_INSTRUMENT.name} = "{names.check_name("instrument", instrument)}"')
        clause = self.state_clause(state)
        if clause is None:
            return None
        if clause:
            parts.append(clause)
        return " AND ".join(parts)


def done_since_clause(since: datetime) -> str:
    """Units completed since ``since`` (an aware datetime)."""
    return f'ExecutionStatus = "Completed" AND CloseTime >= "{since.isoformat()}"'


def closed_between_clause(start: datetime, end: datetime) -> str:
    """Units completed in [start, end): one bar of the throughput sparkline."""
    return (
        f'ExecutionStatus = "Completed" AND CloseTime >= "{start.isoformat()}" '
        f'AND CloseTime < "{end.isoformat()}"'
    )


def _values(*enums: Iterable[object], extra: Sequence[str] = ()) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for enum in enums:
        for member in enum:
            found[str(member)] = None
    for value in extra:
        found[value] = None
    return tuple(found)


def _activities(mapping: Mapping[str, object]) -> Mapping[str, str]:
    return MappingProxyType({k: str(v) for k, v in mapping.items()})


FLOWS: tuple[Flow, ...] = (
    Flow(
        name="unembargo",
        unit="exposure",
        types=(names.EXPOSURE_WORKFLOW,),
        steps=(names.STEP_QUEUED, *(str(s) for s in exposure.Step), names.STEP_WAITING, names.STEP_DONE),
        waiting_steps=MappingProxyType({names.STEP_WAITING: "for raws"}),
        step_of_activity=_activities(exposure.STEP_OF_ACTIVITY),
        has_day=True,
        has_instrument=True,
    ),
    Flow(
        name="arrivals",
        unit="exposure",
        types=(arrival.ARRIVAL_WORKFLOW,),
        steps=(arrival.ARRIVING, arrival.VISITS, arrival.EMBARGOED, arrival.STARTED, arrival.INCOMPLETE),
        waiting_steps=MappingProxyType({arrival.ARRIVING: "for raws", arrival.EMBARGOED: "for embargo end"}),
        step_of_activity=_activities(arrival.STEP_OF_ACTIVITY),
        has_day=True,
        has_instrument=True,
    ),
    Flow(
        name="ccat",
        unit="package, transfer, deletion",
        types=(ccat.PACKAGE_WORKFLOW, ccat.TRANSFER_WORKFLOW, ccat.DELETION_WORKFLOW, ccat.STAGE_WORKFLOW),
        steps=_values(
            ccat.PackageStep,
            ccat.TransferStep,
            ccat.DeletionStep,
            ccat.StageStep,
            extra=(ccat.WAITING, ccat.CLEANUP, ccat.DONE),
        ),
        waiting_steps=MappingProxyType({ccat.WAITING: "for the bundle to fill"}),
        step_of_activity=_activities(ccat.STEP_OF_ACTIVITY),
        state_query=None,
    ),
    Flow(
        name="rawintegrity",
        unit="raw file",
        types=(rawintegrity.FILE_WORKFLOW,),
        steps=_values(
            rawintegrity.Step,
            extra=(rawintegrity.WAITING_MIGRATION, rawintegrity.WAITING_OPERATOR, rawintegrity.STEP_DONE),
        ),
        waiting_steps=MappingProxyType(
            {
                rawintegrity.WAITING_MIGRATION: "for tape migration",
                rawintegrity.WAITING_OPERATOR: "for an operator",
            }
        ),
        step_of_activity=_activities(rawintegrity.STEP_OF_ACTIVITY),
    ),
    Flow(
        name="fits",
        unit="FITS file",
        types=(fits_flow.FILE_WORKFLOW,),
        steps=_values(fits_flow.Step, extra=(fits_flow.QUEUED, fits_flow.FAILED, fits_flow.DONE)),
        step_of_activity=_activities(fits_flow.STEP_OF_ACTIVITY),
        has_instrument=True,
    ),
    Flow(
        name="carousel",
        unit="staging request",
        types=(carousel.CAROUSEL_WORKFLOW,),
        steps=_values(carousel.Step),
        waiting_clause=Wait("for an operator", SA_CAROUSEL_STATUS.name, carousel.Status.OPERATOR.value),
        step_of_activity=_activities(carousel.STEP_OF_ACTIVITY),
    ),
)

BY_NAME: Mapping[str, Flow] = MappingProxyType({f.name: f for f in FLOWS})


def flow(name: str) -> Flow:
    """The flow called ``name``, else KeyError."""
    return BY_NAME[name]


def flow_of_type(workflow_type: str) -> Flow | None:
    """The flow whose units are workflows of ``workflow_type``."""
    return next((f for f in FLOWS if workflow_type in f.types), None)
