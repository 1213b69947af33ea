"""The rawintegrity flow's declaration: a raw file from the online storage to tape.

One workflow per raw file (``rawintegrity-<lfn>``) puts the file to the tape location with its
adler32, waits (durable timers, growing intervals) until the tape system says it migrated,
compares the checksum tape holds with the source's, has the file's tape replica registered in
Rucio (by the batcher workflow, up to 100 files a call), and only then removes the online copy.

    >>> check_lfn("LHCb/2026/RAW/run000123/run000123_0001.raw")
    'LHCb/2026/RAW/run000123/run000123_0001.raw'
    >>> file_workflow_id("LHCb/2026/RAW/run000123/run000123_0001.raw")
    'rawintegrity-LHCb/2026/RAW/run000123/run000123_0001.raw'
    >>> State.DONE.rank > State.REGISTERED.rank
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.common import RetryPolicy

from unembargo.models.errors import NON_RETRYABLE, BadInput
from unembargo.models.flow import StepSpec, step_of_activity
from unembargo.models.names import InvalidName

FILE_WORKFLOW = "RawIntegrityFile"
BATCH_WORKFLOW = "RawIntegrityRegister"
# Signals: a file asks the batcher to register it; the batcher answers the file; an operator
# decides about a file waiting for them.
REGISTER_SIGNAL = "register"
REGISTERED_SIGNAL = "registered"
DECIDE_SIGNAL = "decide"
RETRY, GIVE_UP = "retry", "give_up"

# An LFN is a relative path of safe components: it is a tape path, an online path and a
# Rucio name, so no component may be empty, '.', '..', or hold anything but these.
_LFN_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
LFN_MAX = 500


class InvalidLfn(InvalidName):
    """An LFN that is not a relative path of safe names (it must not escape a folder)."""


class TapeChecksumMismatch(BadInput):
    """The checksum tape holds differs from the online file's: the tape copy is bad."""


class SourceChanged(BadInput):
    """The online file is not the one put to tape (its size or adler32 changed)."""


class RemovalUnsafe(BadInput):
    """Removing the online copy was refused: tape or Rucio do not hold a verified copy."""


class MissingOnline(BadInput):
    """The online file is gone before any verified tape copy exists."""


def check_lfn(lfn: str) -> str:
    """Return ``lfn`` if every component is a safe name, else raise InvalidLfn."""
    parts = lfn.split("/")
    if len(lfn) > LFN_MAX or not all(_LFN_PART.match(p) for p in parts):
        raise InvalidLfn(
            f"LFN {lfn!r} is not a relative path of names made of letters, digits, '.', '_' and "
            f"'-' (at most {LFN_MAX} characters, no empty, '.' or '..' part)"
        )
    return lfn


def file_workflow_id(lfn: str) -> str:
    """Deterministic id: one workflow per raw file, ever."""
    return f"rawintegrity-{check_lfn(lfn)}"


def batch_workflow_id(rse: str) -> str:
    """One registration batcher per tape RSE."""
    return f"rawintegrity-register-{rse}"


class State(StrEnum):
    """A file's state (the ``rawintegrity_state`` search attribute), LHCb's names."""

    ACTIVE = "Active"  # online; being put to tape or waiting for migration
    COPIED = "Copied"  # on tape with the right checksum; not registered yet
    REGISTERED = "Registered"  # tape replica in Rucio; online copy not removed yet
    DONE = "Done"  # online copy removed
    FAILED = "Failed"  # an operator gave up; the online copy is kept

    @property
    def rank(self) -> int:
        """Order of progress: a state is never set to one of lower rank (Done never regresses)."""
        return _RANK[self]


_RANK = {State.ACTIVE: 0, State.COPIED: 1, State.REGISTERED: 2, State.DONE: 3, State.FAILED: 3}


class Step(StrEnum):
    """The flow's activities; also the ``step`` search attribute's values."""

    PUT = "put"
    TAPE = "tape"  # is it migrated? what checksum does tape hold?
    REMOVE_TAPE = "remove_tape"  # a bad tape copy
    REQUEST = "request"  # ask the batcher to register the file
    REGISTER = "register"  # the batcher's Rucio call, up to batch_size files
    REMOVE_ONLINE = "remove_online"


# Values of the ``step`` search attribute besides the steps.
WAITING_MIGRATION = "migration"
WAITING_OPERATOR = "operator"
STEP_DONE = "done"


@dataclass(frozen=True)
class RawPolicy:
    """How a file waits and retries; defaults suit production, tests shorten them."""

    # Transfers (put, then a bad checksum) before an operator is asked.
    max_transfers: int = 3
    # Migration checks: first after this long, then each interval times backoff, capped...
    migration_first_s: float = 60.0
    migration_backoff: float = 2.0
    migration_max_interval_s: float = 3600.0
    # ...and an operator is asked when the file has not migrated this long after its put.
    migration_limit_s: float = 3 * 24 * 3600.0
    # A registration request the batcher did not answer in this long is sent again.
    register_reply_s: float = 600.0
    # Files per Rucio call of the batcher this file starts (a running batcher keeps its own).
    register_batch_size: int = 100
    heartbeat_s: float = 30.0


@dataclass(frozen=True)
class BatchPolicy:
    """How the batcher groups registrations."""

    batch_size: int = 100
    # A batch not yet full waits this long for more files before it is registered anyway.
    batch_wait_s: float = 5.0
    # Continue as new after this many batches: each answers its files by signal (two events a
    # file), so a run's history stays near 2000 events.
    batches_per_run: int = 10
    heartbeat_s: float = 30.0


@dataclass(frozen=True)
class RawFileInput:
    lfn: str
    # Data locations (models/locations.DataLocation names): the online storage and the tape.
    online: str
    tape: str
    # Tape RSE the replica is registered at (its batcher is batch_workflow_id(rse)).
    rse: str
    # Step value -> task queue of the location that serves the step's operation.
    queues: dict[str, str]
    # Workflow task queue, for the batcher this file starts.
    workflow_queue: str
    policy: RawPolicy = field(default_factory=RawPolicy)


@dataclass(frozen=True)
class PutInput:
    lfn: str
    online: str
    tape: str
    # Transfers so far, this one included (the first one counts the file as waiting).
    attempt: int = 1


@dataclass(frozen=True)
class PutReceipt:
    """The online file's size and adler32, and whether this call copied it."""

    size: int
    adler32: str
    copied: bool


@dataclass(frozen=True)
class TapeInput:
    lfn: str
    tape: str


@dataclass(frozen=True)
class TapeReceipt:
    """What the tape system says: migrated or not, the checksum tape holds, when it migrated."""

    migrated: bool
    adler32: str | None = None
    size: int | None = None
    # Seconds from the put to the migration, as the tape system recorded them.
    migration_s: float | None = None


@dataclass(frozen=True)
class RemoveTapeInput:
    lfn: str
    tape: str
    # Only a copy with this (bad) checksum is removed; anything else is left alone.
    bad_adler32: str


@dataclass(frozen=True)
class RemovedReceipt:
    removed: bool


@dataclass(frozen=True)
class RegisterRequest:
    """A file asking to be registered (signal to the batcher); reply_to is its workflow id."""

    lfn: str
    size: int
    adler32: str
    reply_to: str


@dataclass(frozen=True)
class RequestInput:
    request: RegisterRequest
    rse: str
    # Queue of the catalogue's registration operation, where the batcher's Rucio calls run.
    queue: str
    workflow_queue: str
    # The batcher's policy, if this request starts it.
    batch_size: int = 100
    heartbeat_s: float = 30.0


@dataclass(frozen=True)
class RequestReceipt:
    batcher: str


@dataclass(frozen=True)
class RegisteredReply:
    """The batcher's answer: registered, or why not (a named error, never retried by it)."""

    lfn: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class RegisterBatchInput:
    rse: str
    files: list[RegisterRequest]


@dataclass(frozen=True)
class RegisterBatchReceipt:
    # Newly added, already there with the same size and adler32, and conflicts (lfn -> why).
    added: list[str]
    already: list[str]
    conflicts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoveOnlineInput:
    lfn: str
    online: str
    tape: str
    size: int
    adler32: str
    rse: str


@dataclass
class BatchCarry:
    """What a batcher hands its next run: requests not yet answered (bounded by the files waiting)."""

    pending: list[RegisterRequest] = field(default_factory=list)
    batches: int = 0
    files: int = 0
    runs: int = 1


@dataclass(frozen=True)
class BatchInput:
    rse: str
    queue: str
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    carry: BatchCarry | None = None


@dataclass(frozen=True)
class Mismatch:
    """Evidence of one bad tape copy."""

    transfer: int
    expected: str
    found: str
    at: str


@dataclass
class RawFileState:
    """What the ``state`` query (and the run's result) says about a raw file."""

    lfn: str
    state: str
    step: str
    size: int | None = None
    adler32: str | None = None
    transfers: int = 0
    migration_checks: int = 0
    put_at: str | None = None
    migrated_at: str | None = None
    migration_s: float | None = None
    mismatches: list[Mismatch] = field(default_factory=list)
    # Why the file waits for an operator (a named error and what was found), else None.
    operator: str | None = None
    decisions: list[str] = field(default_factory=list)


# Puts and removals touch local storage and the tape front end; Rucio may be down: retry with
# backoff for ever, visibly; bad input fails at once under its name.
RAW_NON_RETRYABLE = [
    *NON_RETRYABLE,
    InvalidLfn.__name__,
    TapeChecksumMismatch.__name__,
    SourceChanged.__name__,
    RemovalUnsafe.__name__,
    MissingOnline.__name__,
]
RAW_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    non_retryable_error_types=RAW_NON_RETRYABLE,
)

# The operations (models/locations.Operation) the steps need: the put and the removal of a bad
# copy at the tape location (an archive), migration checks there, registration at the catalogue,
# and the online copy's deletion at the online storage (a source).
ARCHIVE_TRANSFER, MONITORING, REGISTRATION, DELETION = (
    "archive_transfer",
    "monitoring",
    "registration",
    "deletion",
)

_HOUR, _MINUTE = timedelta(hours=1), timedelta(minutes=1)
STEPS: Mapping[Step, StepSpec] = MappingProxyType(
    {
        # Copying one raw file (a few GB at most) with its checksum: minutes.
        Step.PUT: StepSpec("put_to_tape", PutInput, PutReceipt, ARCHIVE_TRANSFER, _HOUR, RAW_RETRY),
        Step.TAPE: StepSpec("tape_status", TapeInput, TapeReceipt, MONITORING, 30 * _MINUTE, RAW_RETRY),
        Step.REMOVE_TAPE: StepSpec(
            "remove_tape_copy", RemoveTapeInput, RemovedReceipt, ARCHIVE_TRANSFER, 5 * _MINUTE, RAW_RETRY
        ),
        Step.REQUEST: StepSpec(
            "request_registration", RequestInput, RequestReceipt, REGISTRATION, _MINUTE, RAW_RETRY
        ),
        # 100 replicas in one Rucio call take well under a second; 5 min is slack for a busy server.
        Step.REGISTER: StepSpec(
            "register_tape_replicas",
            RegisterBatchInput,
            RegisterBatchReceipt,
            REGISTRATION,
            5 * _MINUTE,
            RAW_RETRY,
        ),
        # Re-reads the online file and the tape copy (checksums) before removing: minutes.
        Step.REMOVE_ONLINE: StepSpec(
            "remove_online", RemoveOnlineInput, RemovedReceipt, DELETION, _HOUR, RAW_RETRY
        ),
    }
)

STEP_OF_ACTIVITY = step_of_activity(STEPS)


class RawIntegritySettings(BaseSettings):
    """Which locations and RSE the flow uses (``UNEMBARGO_RAWINTEGRITY_*``)."""

    model_config = SettingsConfigDict(env_prefix="UNEMBARGO_RAWINTEGRITY_", extra="ignore")

    # Data locations (``unembargo locations add``): the online storage (a disk SOURCE), the tape
    # (a TAPE LONG_TERM_ARCHIVE) and the Rucio catalogue; a file's path is <location path>/<lfn>.
    online_location: str = "raw-online"
    tape_location: str = "raw-tape"
    catalogue_location: str | None = None  # None: the preferred location serving registration
    # The Rucio RSE of the tape location.
    rse: str = "UNEMBARGO_TAPE"
    # The local stack's roots of those two locations (its tape service migrates under tape_root).
    online_root: Path | None = None
    tape_root: Path | None = None

    def online(self, state_dir: Path) -> Path:
        return self.online_root or state_dir / "rawintegrity" / "online"

    def tape(self, state_dir: Path) -> Path:
        return self.tape_root or state_dir / "rawintegrity" / "tape"


# Classes of ``unembargo rawintegrity reconcile``: what online, tape and Rucio hold of a file.
DONE_CLASS = "done"  # gone online; tape and Rucio hold it with one checksum
REMOVAL_PENDING = "registered"  # still online; tape and Rucio hold it verified
WAITING = "waiting"  # online, not yet on tape with its checksum and registered
BAD_TAPE = "bad_tape"  # tape holds another checksum than the online file or Rucio
LOST = "lost"  # gone online without a verified, registered tape copy: the rule was broken


def classify(
    online: tuple[int, str] | None, tape: tuple[int, str] | None, catalogue: tuple[int, str] | None
) -> str:
    """The class of one file from the (size, adler32) each place holds (None: not there).

    >>> classify(None, (3, "0024012d"), (3, "0024012d"))
    'done'
    >>> classify(None, None, (3, "0024012d"))
    'lost'
    """
    want = online or catalogue
    if tape is not None and want is not None and tape != want:
        return BAD_TAPE
    verified = tape is not None and tape == catalogue
    if online is None:
        return DONE_CLASS if verified else LOST
    return REMOVAL_PENDING if verified else WAITING
