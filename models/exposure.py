"""What the exposure workflow and its activities pass each other.

One dataclass in, one out, per workflow and activity; adding a field with a
default never breaks a running workflow. Everything here lands in workflow
history, so it holds references and counts only: no credentials, no file
contents, no per-file lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType

from temporalio.common import RetryPolicy

from unembargo.models import names
from unembargo.models.errors import NON_RETRYABLE
from unembargo.models.flow import StepSpec, step_of_activity


@dataclass(frozen=True)
class Exposure:
    """The business key of one exposure."""

    instrument: str
    day_obs: int
    obs_id: str
    exposure_id: int


class Step(StrEnum):
    """The five steps of an exposure, in order (design.md "The job")."""

    ZIP = "zip"
    EXPORT = "export"
    INGEST = "ingest"
    REGISTER = "register"
    TAG = "tag"


# The operations the steps need (models/locations.Operation, docs/locations.md): unembargo, at the
# archive disk (and the butlers beside it); registration, at the Rucio catalogue.
DESTINATION = "unembargo"
RUCIO = "registration"

# Step -> its task queue (that of the location whose storage or service it needs).
StepQueues = dict[str, str]


@dataclass(frozen=True)
class Policy:
    """Timeouts of an exposure run; defaults suit production, tests shorten them."""

    # A worker killed mid-activity is noticed after this long without a heartbeat
    # (Settings.heartbeat_timeout, through engine/starter.settings_policy, says why 10 s).
    heartbeat_s: float = 10.0
    # Wait for the missing raws of an incomplete exposure up to this long...
    incomplete_wait_s: float = 2 * 3600.0
    # ...checking again this often (a durable timer, not a sleeping worker).
    incomplete_poll_s: float = 300.0


@dataclass(frozen=True)
class ExposureInput:
    exposure: Exposure
    queues: StepQueues
    policy: Policy = field(default_factory=Policy)


def check_input(inp: ExposureInput) -> ExposureInput:
    """``inp`` if every name in it is safe, else InvalidName: nothing may act on an unsafe name.

    Pure, so the workflow runs it before its first step, whoever started it.
    """
    exp = inp.exposure
    names.check_name("instrument", exp.instrument)
    names.check_day_obs(exp.day_obs)
    names.check_name("obs_id", exp.obs_id)
    if not isinstance(exp.exposure_id, int) or isinstance(exp.exposure_id, bool) or exp.exposure_id < 0:
        raise names.InvalidName(f"exposure_id {exp.exposure_id!r} is not a non-negative integer")
    for step in STEPS:
        if step not in inp.queues:
            raise names.InvalidName(f"no task queue for step {step}")
        names.check_name(f"task queue of step {step}", inp.queues[step])
    return inp


@dataclass(frozen=True)
class StepInput:
    """Input of the zip and export steps: which exposure."""

    exposure: Exposure


@dataclass(frozen=True)
class FileReceipt:
    """A file written at the destination: where, how big, its checksums."""

    relpath: str
    size: int
    md5: str
    adler32: str


@dataclass(frozen=True)
class ZipReceipt:
    file: FileReceipt
    members: int
    raws: int
    already_done: bool


@dataclass(frozen=True)
class ExportReceipt:
    file: FileReceipt
    records: int
    # Tracts the exposure's visit overlaps; empty means NoTract. A handful at most.
    tracts: list[int]
    already_done: bool


@dataclass(frozen=True)
class IngestInput:
    exposure: Exposure
    zip: FileReceipt


@dataclass(frozen=True)
class IngestReceipt:
    datasets: int
    already_done: bool


@dataclass(frozen=True)
class RegisterInput:
    exposure: Exposure
    zip: FileReceipt
    yaml: FileReceipt
    tracts: list[int]


@dataclass(frozen=True)
class RegisterReceipt:
    files: int
    datasets: list[str]
    already_done: bool


@dataclass(frozen=True)
class TagReceipt:
    dataset: str
    metadata: str
    already_done: bool


# Transient failures (network, 5xx, database busy, service down) retry forever with
# backoff, visibly in the UI; bad input fails at once under its error's name.
STEP_RETRY = RetryPolicy(
    # The first retry comes 1 s after a failure, or after a killed worker's heartbeat
    # timeout (Settings.heartbeat_timeout says why both are as they are).
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    non_retryable_error_types=NON_RETRYABLE,
)

# The exposure flow's steps. Timeouts bound one attempt: the zip moves a whole focal
# plane (205 files, up to a few GB); the others are a handful of service calls.
STEPS: Mapping[Step, StepSpec] = MappingProxyType(
    {
        Step.ZIP: StepSpec(
            "zip_exposure", StepInput, ZipReceipt, DESTINATION, timedelta(hours=1), STEP_RETRY
        ),
        Step.EXPORT: StepSpec(
            "export_dimensions", StepInput, ExportReceipt, DESTINATION, timedelta(minutes=10), STEP_RETRY
        ),
        Step.INGEST: StepSpec(
            "ingest_zip", IngestInput, IngestReceipt, DESTINATION, timedelta(minutes=30), STEP_RETRY
        ),
        Step.REGISTER: StepSpec(
            "register_in_rucio", RegisterInput, RegisterReceipt, RUCIO, timedelta(minutes=10), STEP_RETRY
        ),
        Step.TAG: StepSpec("tag_obs_dataset", StepInput, TagReceipt, RUCIO, timedelta(minutes=5), STEP_RETRY),
    }
)

# Activity name -> its step (status, spans, log lines).
STEP_OF_ACTIVITY = step_of_activity(STEPS)

# Task priority of each step on its queue (Temporal's priority key: 1 first, 5 last). A later
# step goes ahead of an earlier one, so with a backlog queued at once the exposures already
# zipped finish before more zips start, and exposures come out at a steady rate instead of all
# at the end of the drain (benchmarks/backlog.py). Within one key, tasks go in arrival order.
STEP_PRIORITY: Mapping[Step, int] = MappingProxyType({step: len(Step) - i for i, step in enumerate(Step)})


@dataclass
class StepState:
    """One step as the workflow's ``state`` query reports it."""

    done: bool = False
    when: str | None = None
    receipt: dict[str, object] | None = None


@dataclass
class ExposureState:
    """The step-by-step state of an exposure workflow."""

    obs_id: str
    current: str | None
    steps: dict[str, StepState]
    waiting_for: str | None = None
