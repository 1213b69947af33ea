"""The FITS flow's declaration (the Gemini FitsStorage dataflow): name rules, inputs, receipts, steps.

Deterministic and free of I/O, so the workflows import it; the tables are in models/fits.py.

Files appear on the data-handling system's disk (the DHS location); a durable poller
copies each settled, valid FITS file to the dataflow location and starts the file's
workflow (``fits-<name>``: one per file name, so a file is never processed twice at
once). The workflow ingests the headers, exports the file to every destination (md5
asked first and checked after), ingests it again at the archive, then makes its
preview and its calibration associations, each its own step.

    >>> name_kind("N20251231S0001.fits"), name_kind(".N20251231S0001.fits.part"), name_kind("notes.txt")
    ('fits', 'temporary', 'other')
    >>> fits_workflow_id("N20251231S0001.fits")
    'fits-N20251231S0001.fits'
    >>> settle(now=100.0, size=10, mtime=95.0, previous=None, min_age_s=10.0)
    'young'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from temporalio.common import RetryPolicy

from unembargo.models.errors import NON_RETRYABLE, BadInput, UnsafeKey
from unembargo.models.flow import StepSpec, step_of_activity

FILE_WORKFLOW = "FitsFile"
WATCH_WORKFLOW = "FitsWatch"
REQUEUE_WORKFLOW = "FitsRequeue"
SCAN_ACTIVITY = "scan_dhs"
REQUEUE_ACTIVITY = "fits_requeue"
# Signal to a running file workflow: the file changed (or a requeue): run again once done.
AGAIN_SIGNAL = "again"
STATE_QUERY = "state"


# ---------------------------------------------------------------------------- names


class InvalidFitsName(UnsafeKey):
    """A file name that cannot be a FITS file's name in the archive (a path, a control character)."""


class InvalidFits(BadInput):
    """A file that astropy cannot read as FITS (no SIMPLE card, no END card, truncated)."""


class DestinationConflict(BadInput):
    """A destination holds the file with another md5 after an upload that said it succeeded."""


# Names the DHS writes while a file is not finished, and editors' and rsync's leftovers.
_TEMPORARY = re.compile(r"(^[.~#])|(^tmp)|(\.(tmp|part|partial|writing|swp)$)|(~$)", re.IGNORECASE)
_FITS = re.compile(r"\.fits(\.gz|\.bz2)?$", re.IGNORECASE)
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,200}$")

FITS, TEMPORARY, OTHER = "fits", "temporary", "other"


def name_kind(name: str) -> str:
    """fits, temporary (being written: ignored until renamed) or other (not FITS: ignored)."""
    if _TEMPORARY.search(name):
        return TEMPORARY
    return FITS if _FITS.search(name) else OTHER


def check_fits_name(name: str) -> str:
    """``name`` if it is safe as a file name, workflow id and object key, else InvalidFitsName."""
    if not _SAFE.match(name) or ".." in name:
        raise InvalidFitsName(
            f"file name {name!r} is not allowed: letters, digits, '_', '.', '+', '-' (no path, no '..')"
        )
    return name


def fits_workflow_id(name: str) -> str:
    """Deterministic id: one workflow per file name (single-flight per file)."""
    return f"fits-{check_fits_name(name)}"


def watch_workflow_id(location: str) -> str:
    return f"fits-watch-{location}"


def requeue_schedule_id(location: str) -> str:
    return f"fits-requeue-{location}"


def preview_key(name: str) -> str:
    """Where a file's preview lives in the archive location."""
    return f"previews/{check_fits_name(name)}.png"


# ---------------------------------------------------------------------------- watching

YOUNG, GROWING, READY = "young", "growing", "ready"


def settle(now: float, size: int, mtime: float, previous: tuple[int, float] | None, min_age_s: float) -> str:
    """Whether a file on the DHS disk may be copied: young (written too recently), growing
    (its size changed since the last scan) or ready.

    >>> settle(now=100.0, size=12, mtime=50.0, previous=(10, 40.0), min_age_s=10.0)
    'growing'
    >>> settle(now=100.0, size=12, mtime=50.0, previous=(12, 50.0), min_age_s=10.0)
    'ready'
    """
    if now - mtime < min_age_s:
        return YOUNG
    if previous is not None and previous[0] != size:
        return GROWING
    return READY


# Watch rows' states.
SETTLING, STARTED, INVALID = "settling", "started", "invalid"


def backoff(failures: int, initial_s: float, maximum_s: float) -> timedelta:
    """The wait after ``failures`` failures in a row: doubling from ``initial_s`` to ``maximum_s``.

    >>> [backoff(n, 2, 30).total_seconds() for n in (1, 2, 3, 4, 5, 6)]
    [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    """
    return timedelta(seconds=min(maximum_s, initial_s * 2 ** max(0, failures - 1)))


# ---------------------------------------------------------------------------- re-ingest rules

INGESTED, UNCHANGED, REINGESTED = "ingested", "unchanged", "reingested"


def reingest_needed(
    current: tuple[datetime, str] | None, lastmod: datetime, md5: str | None, force: bool, force_md5: bool
) -> bool:
    """Whether a file (``lastmod``, ``md5``) must be ingested over its current diskfile.

    No current diskfile: yes. ``force``: yes. ``force_md5``: when the md5 differs (a file
    rewritten with the same lastmod). Otherwise: when lastmod differs.

    >>> t = datetime(2025, 12, 31, tzinfo=UTC)
    >>> reingest_needed((t, "a"), t, "b", force=False, force_md5=False)
    False
    >>> reingest_needed((t, "a"), t, "b", force=False, force_md5=True)
    True
    """
    if current is None or force:
        return True
    if force_md5:
        return md5 != current[1]
    return _utc(lastmod) != _utc(current[0])


def _utc(when: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------- calibrations

BIAS, FLAT, DARK = "BIAS", "FLAT", "DARK"
SCIENCE = "OBJECT"
CAL_TYPES = (BIAS, FLAT, DARK)


@dataclass(frozen=True)
class Frame:
    """What a calibration match reads of a header."""

    name: str
    instrument: str | None
    observation_type: str | None
    binning: str | None
    filter: str | None
    exposure_time: float | None
    ut_datetime: datetime | None


def matches(science: Frame, cal: Frame, cal_type: str) -> bool:
    """A bias matches instrument and binning; a flat also the filter; a dark also the exposure time."""
    if cal.observation_type != cal_type or cal.instrument != science.instrument:
        return False
    if cal.binning != science.binning:
        return False
    if cal_type == FLAT and cal.filter != science.filter:
        return False
    if cal_type == DARK:
        if cal.exposure_time is None or science.exposure_time is None:
            return False
        return abs(cal.exposure_time - science.exposure_time) <= 0.01 * max(1.0, science.exposure_time)
    return True


def best_calibration(
    science: Frame, candidates: Sequence[Frame], cal_type: str, window_days: float
) -> Frame | None:
    """The matching calibration closest in time, within ``window_days`` (ties: by name)."""

    def apart(cal: Frame) -> float:
        if science.ut_datetime is None or cal.ut_datetime is None:
            return float("inf")
        return abs((_utc(science.ut_datetime) - _utc(cal.ut_datetime)).total_seconds()) / 86400

    found = [c for c in candidates if matches(science, c, cal_type) and apart(c) <= window_days]
    return min(found, key=lambda c: (apart(c), c.name), default=None)


# ---------------------------------------------------------------------------- workflow IO


@dataclass(frozen=True)
class Place:
    """A location as a step needs it: its name (the database row) and its task queue."""

    location: str
    queue: str


@dataclass(frozen=True)
class FitsPolicy:
    heartbeat_s: float = 30.0
    # Calibration associations can be made only once calibrations exist: a science frame
    # whose bias, flat or dark is missing is not a failure.
    calibration_window_days: float = 30.0


@dataclass(frozen=True)
class FileInput:
    """One file's run: where it comes from (``dhs`` None: already on dataflow, a requeue)."""

    name: str
    dataflow: Place
    destinations: list[Place]
    # Name of the destination that is the archive ("" for none).
    archive: str
    dhs: Place | None = None
    force: bool = False
    force_md5: bool = False
    policy: FitsPolicy = field(default_factory=FitsPolicy)


@dataclass(frozen=True)
class Again:
    """The ``again`` signal: what the next pass of a running file workflow should do."""

    copy: bool = True
    force: bool = False
    force_md5: bool = False


@dataclass(frozen=True)
class CopyInput:
    name: str
    dhs: str
    dataflow: str


@dataclass(frozen=True)
class CopyReceipt:
    md5: str
    size: int
    copied: bool


@dataclass(frozen=True)
class IngestInput:
    name: str
    location: str
    force: bool = False
    force_md5: bool = False


@dataclass(frozen=True)
class IngestReceipt:
    outcome: str  # ingested | unchanged | reingested
    md5: str
    size: int
    fits_ok: bool
    instrument: str | None = None
    observation_type: str | None = None


@dataclass(frozen=True)
class ExportInput:
    name: str
    source: str
    destination: str
    md5: str
    size: int


@dataclass(frozen=True)
class ExportReceipt:
    destination: str
    outcome: str  # same (the far end had it) | uploaded


@dataclass(frozen=True)
class PreviewInput:
    name: str
    location: str


@dataclass(frozen=True)
class PreviewReceipt:
    key: str
    made: bool
    width: int
    height: int


@dataclass(frozen=True)
class CalibrationInput:
    name: str
    location: str
    window_days: float = 30.0


@dataclass(frozen=True)
class CalibrationReceipt:
    science: bool
    # Calibration type -> the associated file's name (None: no match yet).
    found: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanInput:
    dhs: str
    dataflow: str
    destinations: list[str]
    archive: str
    # Task queue of the file workflows the scan starts.
    workflow_queue: str
    min_age_s: float = 10.0
    invalid_after: int = 3


@dataclass(frozen=True)
class ScanReceipt:
    seen: int
    started: int
    waiting: int
    # Files found invalid too often in this scan (reported once each), the first few by name.
    invalid: int = 0
    invalid_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WatchInput:
    scan: ScanInput
    # The DHS location's queue (its disk is mounted there).
    queue: str
    poll_s: float = 5.0
    # Continue as new after this many scans (bounded history).
    scans_per_run: int = 500
    # A scan whose worker died is run again after this long without a heartbeat.
    heartbeat_s: float = 60.0


@dataclass(frozen=True)
class RequeueInput:
    """Which files of the dataflow disk to run again (``unembargo fits requeue``), and how."""

    dataflow: str
    destinations: list[str]
    archive: str
    # The dataflow location's queue (the requeue lists its disk and database) and the queue of
    # the file workflows it starts.
    queue: str
    workflow_queue: str
    file_re: str | None = None
    days: float | None = None
    path: str | None = None
    force: bool = False
    force_md5: bool = False
    policy: FitsPolicy = field(default_factory=FitsPolicy)


@dataclass(frozen=True)
class RequeueReceipt:
    selected: int
    started: int


# ---------------------------------------------------------------------------- the step table


class Step(StrEnum):
    """A file's steps, in order (a pass; values of the ``step`` search attribute too)."""

    COPY = "copy"
    INGEST = "ingest"
    EXPORT = "export"
    ARCHIVE_INGEST = "archive_ingest"
    PREVIEW = "preview"
    CALIBRATION = "calibration"


# Step attribute values besides the steps.
QUEUED, DONE, FAILED = "queued", "done", "failed"

# Location roles: the disk the DHS writes, the dataflow disk, and a destination.
DHS, DATAFLOW, DESTINATION = "fits-dhs", "fits-dataflow", "fits-destination"
# The operation (models/locations.Operation) whose queue serves each role at its location:
# the watcher monitors the DHS disk (a source); the dataflow disk (a buffer) copies, ingests
# and exports; the archive (a long-term archive) ingests, previews and associates.
OPERATION_OF_ROLE: Mapping[str, str] = MappingProxyType(
    {DHS: "monitoring", DATAFLOW: "transfer", DESTINATION: "archive_transfer"}
)

# Disk and database errors pass: retried with backoff, for ever, visibly; bad input fails at once.
FITS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[*NON_RETRYABLE, "InvalidFits", "InvalidFitsName"],
)
# A destination that is down: waited for with a doubling delay (up to 10 min), for ever.
EXPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=[*NON_RETRYABLE, "InvalidFitsName"],
)
# A preview or an association that fails three times is reported; it never holds up the file.
EXTRA_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_attempts=3,
    non_retryable_error_types=[*NON_RETRYABLE, "InvalidFits"],
)

STEPS: Mapping[Step, StepSpec] = MappingProxyType(
    {
        # A FITS file is megabytes to a gigabyte: 30 min for one copy or upload is slack.
        Step.COPY: StepSpec("fits_copy", CopyInput, CopyReceipt, DATAFLOW, timedelta(minutes=30), FITS_RETRY),
        Step.INGEST: StepSpec(
            "fits_ingest", IngestInput, IngestReceipt, DATAFLOW, timedelta(minutes=10), FITS_RETRY
        ),
        Step.EXPORT: StepSpec(
            "fits_export", ExportInput, ExportReceipt, DATAFLOW, timedelta(minutes=30), EXPORT_RETRY
        ),
        Step.ARCHIVE_INGEST: StepSpec(
            "fits_archive_ingest", IngestInput, IngestReceipt, DESTINATION, timedelta(minutes=10), FITS_RETRY
        ),
        Step.PREVIEW: StepSpec(
            "fits_preview", PreviewInput, PreviewReceipt, DESTINATION, timedelta(minutes=10), EXTRA_RETRY
        ),
        Step.CALIBRATION: StepSpec(
            "fits_calibration", CalibrationInput, CalibrationReceipt, DESTINATION, timedelta(minutes=5),
            EXTRA_RETRY,
        ),
    }
)  # fmt: skip

STEP_OF_ACTIVITY = step_of_activity(STEPS)


@dataclass
class FileState:
    """What the ``state`` query (and the run's result) says about one file."""

    name: str
    step: str
    passes: int = 0
    md5: str | None = None
    size: int | None = None
    ingest: str | None = None
    instrument: str | None = None
    observation_type: str | None = None
    # Destination -> same | uploaded | failed: <why>.
    exports: dict[str, str] = field(default_factory=dict)
    archive_ingest: str | None = None
    preview: str | None = None
    calibration: dict[str, str | None] | None = None
    # Step (or step:destination) -> why it failed, for the steps that did not stop the rest.
    failures: dict[str, str] = field(default_factory=dict)
