"""What ``unembargo reconcile`` finds about one day, source by source, and what it concludes.

Plain data, no clients: the inventory functions (activities/, client/) fill these in,
and the classifier (client/reconcile.py) reads them, so it can be tested without services.
Files are keyed by their relative path under the destination root, which is also their
Rucio name (``LSSTCam/20251231/MC_O_20251231_000010.zip``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from unembargo.models import arrival

UNEMBARGOED = "unembargoed"
EMBARGOED = "embargoed"
RUNNING = "running"
FAILED = "failed"
HALF_DONE = "half-done"
MISSING = "missing"
ORPHAN = "orphan"
# A folder in the embargo bucket that the embargo butler has no exposure record of:
# nothing can unembargo it until someone ingests (or removes) it.
UNREGISTERED = "no-butler-record"
# --verify: a step's file or records exist under the right name but their content does
# not match the source (a conflicting zip, a changed bucket object, wrong checksums).
CORRUPT = "corrupt"
# Its arrival workflow is still ingesting its raws (not every expected sensor has one).
ARRIVING = "arriving"
# Its arrival workflow gave up: expected sensors still had no raw after incomplete_wait.
INCOMPLETE = "incomplete"
# Display order, from "nothing to do" to "look at this".
CLASSES = (
    UNEMBARGOED, EMBARGOED, ARRIVING, RUNNING, FAILED, HALF_DONE, MISSING, INCOMPLETE, UNREGISTERED,
    CORRUPT, ORPHAN,
)  # fmt: skip
# Classes that fail the exit code; --repair (re)starts a workflow for those of them that
# the embargo butler knows and that are due (never for incomplete, no-butler-record or corrupt).
NEEDS_ACTION = (MISSING, HALF_DONE, FAILED, INCOMPLETE, UNREGISTERED, CORRUPT)
REPAIRABLE = (MISSING, HALF_DONE, FAILED)

# The inventory's sources, in the order timings are reported.
SOURCES = ("s3", "butler", "destination", "rucio", "temporal")


@dataclass(frozen=True)
class EmbargoExposure:
    """One exposure of the day as the embargo butler records it."""

    exposure_id: int
    # Past its embargo period under the configured rules (as `unembargo start` judges).
    due: bool
    # End of its timespan (UTC); None when the record has none.
    end: datetime | None = None
    # Tracts its visits overlap; empty means its files belong in NoTract.
    tracts: tuple[int, ...] = ()
    # When its embargo ends: ``end`` plus the period of the first rule it matches.
    embargo_end: datetime | None = None


@dataclass(frozen=True)
class MainHolding:
    """What the main butler holds of an exposure that it has any datasets of."""

    complete: bool
    # What is short when not complete ("190 of 205 raws").
    detail: str = ""


@dataclass(frozen=True)
class RucioFile:
    """A file DID of the day: size, checksums, whether a replica exists, its datasets."""

    bytes: int | None
    adler32: str | None
    md5: str | None
    available: bool
    # Names (in our scope) of the datasets it is attached to.
    parents: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ObsDataset:
    """An exposure's Obs dataset: open or closed, and its backup tag."""

    open: bool
    backup: Any = None


@dataclass(frozen=True)
class RucioDay:
    files: dict[str, RucioFile] = field(default_factory=dict)
    # By obs_id.
    obs: dict[str, ObsDataset] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowRun:
    """The latest run of an exposure's workflow."""

    workflow_id: str
    # running | completed | failed | terminated | canceled | timed_out
    status: str
    # The `step` search attribute: the step it is at, or failed at; "done" when complete.
    step: str
    started: datetime | None = None
    # Failed runs: the error they failed with.
    error: str | None = None
    # Running runs: the pending activity, its attempt and last failure.
    activity: str | None = None
    attempt: int | None = None
    last_failure: str | None = None


# An exposure's arrival (workflows/arrival.py) as reconcile and status show it.
ARRIVAL_ARRIVING = "arriving"  # running: raws coming in, or its visit being defined
ARRIVAL_EMBARGOED = "embargoed"  # running: complete, waiting (a durable timer) for its embargo end
ARRIVAL_INCOMPLETE = "incomplete"  # failed: expected sensors had no raw after incomplete_wait
ARRIVAL_STARTED = "started"  # done: its unembargo workflow was started
ARRIVAL_STOPPED = "stopped"  # failed otherwise, terminated, canceled or timed out
NOT_ARRIVED = "not-yet-arrived"  # no arrival workflow has heard of it


@dataclass(frozen=True)
class ArrivalRun:
    """The latest run of an exposure's arrival workflow (``arrival-<instrument>-<obs_id>``)."""

    workflow_id: str
    # One of the ARRIVAL_* states above (NOT_ARRIVED when there is no such workflow).
    state: str
    # The run's status (running | completed | failed | ...) and its `step` search attribute.
    status: str = "-"
    step: str = "-"
    started: datetime | None = None
    # embargoed: when its embargo ends (UTC), when known.
    embargo_end: datetime | None = None
    # Expected sensors with no raw yet, of how many (incomplete; arriving when its state was read).
    missing: int | None = None
    expected: int | None = None
    raws_ingested: int | None = None
    # A closed, unsuccessful run: its failure message.
    error: str | None = None

    def describe(self, day_obs: int | None = None) -> str:
        """One line for a person: the state and what it is waiting for."""
        sweep = f"`unembargo arrivals sweep --day {day_obs}`" if day_obs else "`unembargo arrivals sweep`"
        if self.state == ARRIVAL_ARRIVING:
            since = f" since {self.started:%Y-%m-%d %H:%M} UTC" if self.started else ""
            counted = ""
            if self.expected is not None and self.missing is not None:
                counted = (
                    f": {self.expected - self.missing} of {self.expected} expected sensors have their raw"
                )
            elif self.raws_ingested is not None:
                counted = f": {self.raws_ingested} raws ingested, expectedSensors not read yet"
            step = " (defining its visit)" if self.step == arrival.VISITS else ""
            return f"arriving{since}{counted}{step}"
        if self.state == ARRIVAL_EMBARGOED:
            when = (
                f"{self.embargo_end:%Y-%m-%d %H:%M:%S} UTC" if self.embargo_end else "a time not known here"
            )
            return f"arrived complete; waiting for its embargo end at {when}, then its arrival starts it"
        if self.state == ARRIVAL_INCOMPLETE:
            if self.missing is not None and self.expected is not None:
                what = f"{self.missing} of {self.expected} expected sensors have no raw"
            else:
                what = (self.error or "expected sensors have no raw").split(". ")[0]
            return f"incomplete: {what}. Re-send the missing files, then {sweep} starts a new arrival"
        if self.state == ARRIVAL_STARTED:
            return "arrived; its unembargo workflow was started"
        if self.state == ARRIVAL_STOPPED:
            return f"its arrival {self.status}" + (f": {self.error}" if self.error else "")
        return (
            "no arrival workflow has heard of it: not arrived yet, its notifications were lost "
            f"({sweep} finds them), or its raws were ingested another way"
        )


@dataclass
class Inventory:
    """Everything the sources say about one day."""

    instrument: str
    day_obs: int
    # Where the day's exposure folders are, for messages (s3://bucket/prefix/).
    bucket_url: str = ""
    # obs_ids with a folder in the embargo bucket.
    folders: frozenset[str] = frozenset()
    # The embargo butler's exposures of the day, by obs_id.
    exposures: dict[str, EmbargoExposure] = field(default_factory=dict)
    # The main butler's holdings, by obs_id (absent: it holds none of the exposure's raws).
    main: dict[str, MainHolding] = field(default_factory=dict)
    # Files in the day's destination folder: relative path -> size.
    destination: dict[str, int] = field(default_factory=dict)
    # Staging files there (ours, ``.<name>.<hex>.partial``, and the old cron tool's
    # ``<obs_id>.zip.transfer-tmp``): relative path -> size.
    staging: dict[str, int] = field(default_factory=dict)
    # --verify only: what differs in a file or record that exists, by obs_id and step.
    deep: dict[str, dict[str, str]] = field(default_factory=dict)
    rucio: RucioDay = field(default_factory=RucioDay)
    # Latest workflow run by obs_id.
    workflows: dict[str, WorkflowRun] = field(default_factory=dict)
    # Latest arrival workflow run by obs_id (absent: no arrival workflow).
    arrivals: dict[str, ArrivalRun] = field(default_factory=dict)
    # Wall time of each source's inventory (they run concurrently).
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """One exposure's class and why."""

    obs_id: str
    klass: str
    reason: str
    # Steps whose "done when" holds.
    done: tuple[str, ...] = ()
    exposure_id: int | None = None
    due: bool = False
    workflow: WorkflowRun | None = None
    arrival: ArrivalRun | None = None

    @property
    def repairable(self) -> bool:
        """--repair (re)starts it: it needs action, is known to the embargo butler and is due."""
        return self.klass in REPAIRABLE and self.exposure_id is not None and self.due

    def as_dict(self) -> dict[str, Any]:
        return {
            "obs_id": self.obs_id,
            "class": self.klass,
            "reason": self.reason,
            "done": list(self.done),
            "exposure_id": self.exposure_id,
            "due": self.due,
            "workflow": asdict(self.workflow) if self.workflow else None,
            "arrival": asdict(self.arrival) if self.arrival else None,
        }


@dataclass(frozen=True)
class StagingFile:
    """A staging file left in the destination day folder, and whose it is."""

    name: str
    size: int
    # The exposure it was for (None when the name says no valid obs_id).
    obs_id: str | None
    # "ours" (a .partial of this tool) or "cron" (the old tool's .transfer-tmp).
    made_by: str
    # True when its exposure's workflow is running: perhaps in use, not stale.
    in_use: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
