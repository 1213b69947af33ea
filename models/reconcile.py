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
# Display order, from "nothing to do" to "look at this".
CLASSES = (UNEMBARGOED, EMBARGOED, RUNNING, FAILED, HALF_DONE, MISSING, UNREGISTERED, CORRUPT, ORPHAN)
# Classes that fail the exit code; --repair (re)starts a workflow for those of them that
# the embargo butler knows and that are due (never for no-butler-record or corrupt).
NEEDS_ACTION = (MISSING, HALF_DONE, FAILED, UNREGISTERED, CORRUPT)
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
