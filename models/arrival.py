"""The arrivals flow's declaration: what an arrival workflow and its activities pass each other.

One arrival workflow per exposure (``arrival-<instrument>-<obs_id>``) hears of each new
object of the exposure's folder (a signal per bucket notification), ingests the raws in
place into the embargo butler in batches, records the sidecars, and, once every sensor
of ``<obs_id>_expectedSensors.json`` has its raw, defines the one-to-one visit and starts
the exposure's unembargo workflow when its embargo ends.

    >>> parse_key("", "LSSTCam/20251231/MC_O_20251231_000010/MC_O_20251231_000010_R22_S11.fits").kind
    'raw'
    >>> arrival_workflow_id("LSSTCam", "MC_O_20251231_000010")
    'arrival-LSSTCam-MC_O_20251231_000010'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.common import RetryPolicy

from unembargo.models import names
from unembargo.models.errors import NON_RETRYABLE
from unembargo.models.exposure import DESTINATION, Exposure
from unembargo.models.flow import StepSpec, step_of_activity

ARRIVAL_WORKFLOW = "UnembargoArrival"
SWEEP_WORKFLOW = "UnembargoArrivalSweep"
SWEEP_ACTIVITY = "sweep_arrivals"
# Signals: one per object the bucket announced; "rescan" asks the workflow to list its folder.
OBJECT_SIGNAL = "object"
RESCAN_SIGNAL = "rescan"

# Values of the `step` search attribute of an arrival workflow, in the order they occur.
ARRIVING = "arriving"  # files coming in, not every expected sensor ingested yet
INCOMPLETE = "incomplete"  # incomplete_wait passed with sensors still missing (the run fails)
VISITS = "visits"  # complete: defining the one-to-one visit
EMBARGOED = "embargoed"  # complete, waiting (durable timer) for the embargo to end
STARTED = "started"  # the unembargo workflow was started (or existed already): done

# File kinds in an exposure folder.
RAW, SIDECAR, EXPECTED, OTHER = "raw", "sidecar", "expected", "other"
FITS_SUFFIXES = (".fits", ".fz")


class MalformedKey(names.InvalidName):
    """An object key that is not ``<instrument>/<YYYYMMDD>/<obs_id>/<file>`` under the prefix."""


def arrival_workflow_id(instrument: str, obs_id: str) -> str:
    """Deterministic id: one arrival workflow per exposure."""
    return f"arrival-{names.check_name('instrument', instrument)}-{names.check_name('obs_id', obs_id)}"


def sweep_schedule_id(instrument: str) -> str:
    return f"arrival-sweep-{names.check_name('instrument', instrument)}"


def file_kind(obs_id: str, name: str) -> str:
    """raw, sidecar (``*.json``), expected (``<obs_id>_expectedSensors.json``) or other."""
    if name == names.expected_sensors_name(obs_id):
        return EXPECTED
    lowered = name.lower()
    if lowered.endswith(FITS_SUFFIXES):
        return RAW
    if lowered.endswith(".json"):
        return SIDECAR
    return OTHER


@dataclass(frozen=True)
class ObjectEvent:
    """One object of an exposure folder, as a notification (or a listing) told of it."""

    instrument: str
    day_obs: int
    obs_id: str
    # Name relative to the exposure folder (never a path: no '/').
    name: str
    size: int = 0
    etag: str = ""

    @property
    def kind(self) -> str:
        return file_kind(self.obs_id, self.name)


def parse_key(prefix: str, key: str, size: int = 0, etag: str = "") -> ObjectEvent:
    """The event of an (already URL-decoded) object key, else MalformedKey / InvalidName.

    >>> parse_key("", "LSSTCam/20251231/MC_O_20251231_000010/notes 1.txt").name
    'notes 1.txt'
    >>> parse_key("", "LSSTCam/20251231/x/../y")
    Traceback (most recent call last):
    ...
    unembargo.models.arrival.MalformedKey: key 'LSSTCam/20251231/x/../y': file name '..' is not allowed
    """
    if not key.startswith(prefix):
        raise MalformedKey(f"key {key!r} is not under the prefix {prefix!r}")
    parts = key[len(prefix) :].split("/")
    if len(parts) != 4:
        raise MalformedKey(f"key {key!r} is not <instrument>/<YYYYMMDD>/<obs_id>/<file>")
    instrument, day, obs_id, name = parts
    if name in ("", ".", "..") or "\\" in name or "\x00" in name or len(name) > 255:
        raise MalformedKey(f"key {key!r}: file name {name!r} is not allowed")
    try:
        names.check_name("instrument", instrument)
        day_obs = names.check_day_obs(day)
        names.check_name("obs_id", obs_id)
    except names.InvalidName as err:
        raise MalformedKey(f"key {key!r}: {err}") from None
    return ObjectEvent(instrument, day_obs, obs_id, name, int(size), etag.strip('"').lower())


class Step(StrEnum):
    """The arrival flow's activities, in the order an exposure meets them."""

    LIST = "list"
    EXPECTED = "expected"
    INGEST = "ingest"
    VISITS = "visits"
    EMBARGO = "embargo"
    START = "start"


@dataclass(frozen=True)
class ArrivalPolicy:
    """How an arrival batches, waits and retries; defaults suit production, tests shorten them."""

    # Raws per ingest activity (the production enqueue service ingests 10 at a time).
    batch_size: int = 25
    # A batch not yet full waits this long for more raws before it is ingested anyway.
    batch_wait_s: float = 1.0
    # An announced object that cannot be read yet is tried again this often...
    retry_s: float = 30.0
    # ...and the exposure is reported incomplete (the run fails) when sensors are still
    # missing this long after the first object arrived.
    incomplete_wait_s: float = 2 * 3600.0
    heartbeat_s: float = 30.0
    # Continue as new past this many history events (Temporal suggests it near 10k too).
    history_limit: int = 2000
    # Butler formatter of the raws (a class path; the worker imports it at ingest).
    raw_formatter: str = "unembargo.devstack.formatter.SyntheticRawFormatter"


@dataclass
class ExposureFacts:
    """What the headers say about the exposure (from the first ingested raw)."""

    exposure_id: int
    can_see_sky: bool
    observation_type: str


@dataclass
class ArrivalCarry:
    """State an arrival hands to its next run (continue-as-new). Bounded by the folder."""

    seen: list[str] = field(default_factory=list)
    # Raw name -> detector full name, for every raw in the embargo butler.
    ingested: dict[str, str] = field(default_factory=dict)
    # Name -> why it could not be ingested (never the file's contents).
    failed: dict[str, str] = field(default_factory=dict)
    # Raws announced but not readable yet -> attempts so far.
    unreadable: dict[str, int] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    expected: list[str] | None = None
    expected_pending: bool = False
    sidecars: int = 0
    others: int = 0
    duplicates: int = 0
    facts: ExposureFacts | None = None
    first_seen: str | None = None
    listed: bool = False
    complete: bool = False
    visits_done: bool = False
    embargo_end: str | None = None
    runs: int = 1


@dataclass(frozen=True)
class ArrivalInput:
    instrument: str
    day_obs: int
    obs_id: str
    # Task queue of the location that reaches the embargo bucket and butler.
    queue: str
    policy: ArrivalPolicy = field(default_factory=ArrivalPolicy)
    carry: ArrivalCarry | None = None


@dataclass(frozen=True)
class FolderInput:
    instrument: str
    day_obs: int
    obs_id: str


@dataclass(frozen=True)
class FolderReceipt:
    """Names of the exposure folder's objects (bounded: one exposure's folder)."""

    names: list[str]


@dataclass(frozen=True)
class ExpectedReceipt:
    # Detector full names the camera was asked to read; None if the file is not readable yet.
    detectors: list[str] | None
    problem: str | None = None


@dataclass(frozen=True)
class IngestBatchInput:
    instrument: str
    day_obs: int
    obs_id: str
    names: list[str]
    raw_formatter: str


# Per-file outcomes of an ingest batch.
INGESTED, ALREADY, UNREADABLE, FAILED = "ingested", "already", "unreadable", "failed"


@dataclass(frozen=True)
class FileOutcome:
    name: str
    outcome: str
    detector: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class IngestBatchReceipt:
    files: list[FileOutcome]
    facts: ExposureFacts | None = None


@dataclass(frozen=True)
class VisitInput:
    instrument: str
    exposure_id: int


@dataclass(frozen=True)
class VisitReceipt:
    visit: int | None
    detectors: int
    already_done: bool


@dataclass(frozen=True)
class EmbargoInput:
    instrument: str
    exposure_id: int


@dataclass(frozen=True)
class EmbargoReceipt:
    """When the exposure's embargo ends, under the first rule it matches."""

    end: str  # ISO time, UTC
    period_s: float
    rule: int


@dataclass(frozen=True)
class StartInput:
    exposure: Exposure


@dataclass(frozen=True)
class StartReceipt:
    workflow_id: str
    outcome: str


# Reads and butler writes fail transiently (S3 or registry busy): retry with backoff for
# ever, visibly; bad input fails at once under its name.
ARRIVAL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=NON_RETRYABLE,
)

# Every arrival step reads or writes the embargo bucket and butler: the location that zips
# reaches both (docs/locations.md), so it serves them.
ARRIVAL_LOCATION = DESTINATION

STEPS: Mapping[Step, StepSpec] = MappingProxyType(
    {
        Step.LIST: StepSpec(
            "list_arrival_folder", FolderInput, FolderReceipt, ARRIVAL_LOCATION,
            timedelta(minutes=2), ARRIVAL_RETRY,
        ),
        Step.EXPECTED: StepSpec(
            "read_expected_sensors", FolderInput, ExpectedReceipt, ARRIVAL_LOCATION,
            timedelta(minutes=2), ARRIVAL_RETRY,
        ),
        # A batch reads 25 headers and makes one butler ingest: seconds; 5 min is slack.
        Step.INGEST: StepSpec(
            "ingest_raws", IngestBatchInput, IngestBatchReceipt, ARRIVAL_LOCATION,
            timedelta(minutes=5), ARRIVAL_RETRY,
        ),
        Step.VISITS: StepSpec(
            "define_visit", VisitInput, VisitReceipt, ARRIVAL_LOCATION, timedelta(minutes=5), ARRIVAL_RETRY
        ),
        Step.EMBARGO: StepSpec(
            "embargo_end", EmbargoInput, EmbargoReceipt, ARRIVAL_LOCATION, timedelta(minutes=2), ARRIVAL_RETRY
        ),
        Step.START: StepSpec(
            "start_unembargo", StartInput, StartReceipt, ARRIVAL_LOCATION, timedelta(minutes=2), ARRIVAL_RETRY
        ),
    }
)  # fmt: skip

STEP_OF_ACTIVITY = step_of_activity(STEPS)


@dataclass
class ArrivalState:
    """What the ``state`` query (and the run's result) says about an arriving exposure."""

    obs_id: str
    step: str
    seen: int
    raws_ingested: int
    sidecars: int
    others: int
    duplicates: int
    pending: int
    unreadable: list[str]
    failed: dict[str, str]
    expected: int | None
    # Expected detectors with no raw ingested yet (full names).
    missing: list[str]
    complete: bool
    visit_defined: bool
    embargo_end: str | None
    unembargo: str | None = None
    runs: int = 1


class ListenSettings(BaseSettings):
    """The notification endpoint's settings (``UNEMBARGO_NOTIFY_*``, ``UNEMBARGO_LISTEN_*``).

    The shared secret comes from the environment or a file, never a command-line argument.
    """

    model_config = SettingsConfigDict(env_prefix="UNEMBARGO_", extra="ignore")

    notify_secret: SecretStr | None = None
    notify_secret_file: Path | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 8090
    # A Ceph RGW notification carries one record (about 1.5 KB); AWS may batch a few.
    notify_max_body: int = 256 * 1024
    # Requests handled at once; more get 503 (the sender retries, persistent topics do).
    notify_max_concurrency: int = 64
    # The arrival workflows' policy (ArrivalPolicy), for the runs this endpoint starts.
    arrival_batch_size: int = 25
    arrival_retry_s: float = 30.0

    def secret(self, default_file: Path | None = None) -> bytes | None:
        """The shared secret, from the setting, its file, or ``default_file``."""
        if self.notify_secret is not None:
            return self.notify_secret.get_secret_value().encode()
        for path in (self.notify_secret_file, default_file):
            if path is not None and path.is_file():
                return path.read_text().strip().encode()
        return None


def secret_file(state_dir: Path) -> Path:
    """Where the local stack keeps its notification secret (mode 0600)."""
    return state_dir / "notify-secret"


SEEN_QUERY = "seen_names"


@dataclass(frozen=True)
class SweepInput:
    """A sweep run: the days (offsets before today; 0 = today's day_obs) of one instrument."""

    queue: str
    instrument: str = "LSSTCam"
    days: list[int] = field(default_factory=lambda: [0, 1])


@dataclass(frozen=True)
class SweepResult:
    exposures: int
    signalled: int
    # Exposures by what the sweep found: "up to date", "caught up", "started", "complete"...
    by_state: dict[str, int] = field(default_factory=dict)
