"""What the exposure workflow and its activities pass each other.

One dataclass in, one out, per workflow and activity; adding a field with a
default never breaks a running workflow. Everything here lands in workflow
history, so it holds references and counts only: no credentials, no file
contents, no per-file lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unembargo.models import names


@dataclass(frozen=True)
class Exposure:
    """The business key of one exposure."""

    instrument: str
    day_obs: int
    obs_id: str
    exposure_id: int


@dataclass(frozen=True)
class StepQueues:
    """Task queue of each step: the location whose storage or service it needs."""

    zip: str
    export: str
    ingest: str
    register: str
    tag: str


@dataclass(frozen=True)
class Policy:
    """Timeouts of an exposure run; defaults suit production, tests shorten them."""

    # A worker killed mid-activity is noticed after this long without a heartbeat.
    heartbeat_s: float = 30.0
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
    for step in names.STEPS:
        names.check_name(f"task queue of step {step}", getattr(inp.queues, step))
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
