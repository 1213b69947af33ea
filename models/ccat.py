"""The CCAT flow's declaration: what its workflows and activities pass each other.

Raw files of one observation, filed at a SOURCE, are tarred into one package at the
site's best BUFFER (one workflow per package, ``ccat-package-<package>``); packages are
bundled at the buffer into transfer packages (one workflow per bundle,
``ccat-transfer-<bundle>``), each sent to an archive site chosen round-robin, unpacked and
verified there, archived into that site's LONG_TERM_ARCHIVE and replicated to every
other one; only then do deletion workflows (``ccat-delete-<kind>-<unit>-<location>``)
free the SOURCE and BUFFER copies. Safe to import in workflow code: no I/O library.
The tables are in ``models/ccat_tables.py``.

    >>> package_workflow_id("obs-0001")
    'ccat-package-obs-0001'
    >>> deletion_workflow_id(FILE_SET, "obs-0001", "telescope-source")
    'ccat-delete-files-obs-0001-telescope-source'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType

from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.common import RetryPolicy

from unembargo.models import names
from unembargo.models.errors import NON_RETRYABLE, BadInput, ChecksumMismatch
from unembargo.models.flow import StepSpec, step_of_activity

PACKAGE_WORKFLOW = "CcatPackage"
TRANSFER_WORKFLOW = "CcatTransfer"
DELETION_WORKFLOW = "CcatDeletion"
STAGE_WORKFLOW = "CcatStage"
WATCH_WORKFLOW = "CcatWatch"
# Query of a watch workflow: its last scan's receipt.
LAST_SCAN_QUERY = "last_scan"
# Signal to a transfer workflow: its bundle reached the size limit, close it now.
FULL_SIGNAL = "full"

# Operations of the location model (models/locations.Operation values) the flow's steps
# need; spelled here because workflow code may not import the tables' module.
PACKAGE_CREATION = "package_creation"
TRANSFER_PACKAGE_CREATION = "transfer_package_creation"
TRANSFER = "transfer"
UNPACKING = "unpacking"
ARCHIVE_TRANSFER = "archive_transfer"
STAGING = "staging"
DELETION = "deletion"
MONITORING = "monitoring"

# Kinds of unit a PhysicalCopy (and a deletion) is about: a raw file, a package tar,
# a transfer package tar; a deletion of FILE_SET removes a package's raw files at a SOURCE.
FILE, PACKAGE, BUNDLE, FILE_SET = "file", "package", "transfer", "files"

# Layout inside a location (its path, or its bucket prefix).
PACKAGES_DIR = "packages"
TRANSFERS_DIR = "transfers"
STAGED_DIR = "staged"
TAR_SUFFIX = ".tar"
SIDECAR_SUFFIX = ".meta.json"


def package_workflow_id(package: str) -> str:
    """Deterministic id: one package workflow per package (= observation), ever."""
    return f"ccat-package-{names.check_name('package', package)}"


def transfer_workflow_id(transfer: str) -> str:
    return f"ccat-transfer-{names.check_name('transfer package', transfer)}"


def deletion_workflow_id(kind: str, unit: str, location: str) -> str:
    """One deletion workflow per copy: a unit (of a kind) at a location."""
    return f"ccat-delete-{kind}-{names.check_name(kind, unit)}-{names.check_name('location', location)}"


def stage_workflow_id(package: str, location: str) -> str:
    return f"ccat-stage-{names.check_name('package', package)}-{names.check_name('location', location)}"


def watch_workflow_id(source: str) -> str:
    """One directory watch per SOURCE location."""
    return f"ccat-watch-{names.check_name('location', source)}"


def package_relpath(package: str) -> str:
    """Where a package tar sits inside a BUFFER, LONG_TERM_ARCHIVE or PROCESSING location."""
    return f"{PACKAGES_DIR}/{names.check_name('package', package)}{TAR_SUFFIX}"


def transfer_relpath(transfer: str) -> str:
    """Where a transfer package tar sits inside a BUFFER."""
    return f"{TRANSFERS_DIR}/{names.check_name('transfer package', transfer)}{TAR_SUFFIX}"


def transfer_name(buffer: str, seq: int) -> str:
    """Name of a buffer's ``seq``-th transfer package.

    >>> transfer_name("telescope-buffer", 7)
    'telescope-buffer-000007'
    """
    return f"{names.check_name('location', buffer)}-{seq:06d}"


# ---------------------------------------------------------------------------- inputs and receipts


@dataclass(frozen=True)
class Place:
    """A location as a workflow needs it: its name, site, and its queue per operation."""

    location: str
    site: str
    queues: dict[str, str]

    def queue(self, operation: str) -> str:
        if operation not in self.queues:
            raise ValueError(f"location {self.location} does not serve {operation}")
        return self.queues[operation]


@dataclass(frozen=True)
class CcatPolicy:
    """How the flow's workflows wait and retry; defaults suit production, tests shorten them."""

    heartbeat_s: float = 30.0
    # A bundle stays open this long for more packages before it is sent anyway.
    bundle_wait_s: float = 60.0
    # A transfer package whose unpacked packages fail their checksums is sent again this often.
    max_retransfers: int = 3


@dataclass(frozen=True)
class PackageInput:
    package: str
    source: Place
    policy: CcatPolicy = field(default_factory=CcatPolicy)


@dataclass(frozen=True)
class RouteBufferInput:
    package: str
    source: str


@dataclass(frozen=True)
class RouteBufferReceipt:
    buffer: Place
    # True when the package already sat at that buffer (a rerun keeps it there).
    already: bool = False


@dataclass(frozen=True)
class PackageStepInput:
    package: str
    source: str
    buffer: str


@dataclass(frozen=True)
class PackageReceipt:
    package: str
    files: int
    size: int
    checksum: str
    already: bool = False


@dataclass(frozen=True)
class BundleInput:
    package: str
    buffer: str


@dataclass(frozen=True)
class BundleReceipt:
    transfer: str
    # Another package like this one would not fit: close the bundle now.
    full: bool = False


@dataclass(frozen=True)
class TransferInput:
    transfer: str
    buffer: Place
    policy: CcatPolicy = field(default_factory=CcatPolicy)


@dataclass(frozen=True)
class CloseInput:
    transfer: str
    buffer: str


@dataclass(frozen=True)
class PackageRef:
    name: str
    size: int
    checksum: str
    source: str


@dataclass(frozen=True)
class CloseReceipt:
    size: int
    checksum: str
    packages: list[PackageRef]
    # Each package's SOURCE, by location name (its deletion queue).
    sources: dict[str, Place]


@dataclass(frozen=True)
class RouteArchiveInput:
    transfer: str


@dataclass(frozen=True)
class ArchiveSite:
    """An archive site: the BUFFER that receives and unpacks, the LONG_TERM_ARCHIVE that keeps."""

    site: str
    buffer: Place
    archive: Place


@dataclass(frozen=True)
class RouteArchiveReceipt:
    # Round-robin choice, kept in the database: the site the bundle is sent to...
    destination: ArchiveSite
    # ...and every other archive site, whose archive gets a replica.
    others: list[ArchiveSite]


@dataclass(frozen=True)
class TransferStepInput:
    transfer: str
    source: str
    destination: str
    size: int
    checksum: str
    # Send again even if a copy is there (its unpacked packages failed their checksums).
    fresh: bool = False


@dataclass(frozen=True)
class TransferReceipt:
    size: int
    seconds: float
    already: bool = False


@dataclass(frozen=True)
class UnpackInput:
    transfer: str
    buffer: str
    packages: list[PackageRef]


@dataclass(frozen=True)
class UnpackReceipt:
    verified: int


@dataclass(frozen=True)
class ArchiveInput:
    transfer: str
    buffer: str
    archive: str
    packages: list[PackageRef]


@dataclass(frozen=True)
class ArchiveReceipt:
    archived: int
    already: int = 0


@dataclass(frozen=True)
class ReplicateInput:
    source: str
    destination: str
    packages: list[PackageRef]


@dataclass(frozen=True)
class TransferResult:
    transfer: str
    destination: str
    replicas: list[str]
    packages: int
    deletions: int
    # Deletion workflows that refused or failed (their ids): their copies are kept.
    refused: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeletionInput:
    kind: str  # FILE_SET, PACKAGE or BUNDLE
    unit: str
    location: str
    queue: str
    heartbeat_s: float = 30.0


@dataclass(frozen=True)
class DeleteStepInput:
    kind: str
    unit: str
    location: str


@dataclass(frozen=True)
class DeleteReceipt:
    deleted: int
    already: bool = False


@dataclass(frozen=True)
class StageInput:
    package: str
    location: Place
    heartbeat_s: float = 30.0


@dataclass(frozen=True)
class StageStepInput:
    package: str
    location: str


@dataclass(frozen=True)
class StageReceipt:
    archive: str
    files: int
    size: int
    already: bool = False


@dataclass(frozen=True)
class WatchInput:
    """The directory watch of a SOURCE: scan its folder every ``poll_s``, file each complete
    observation folder, start its package workflow."""

    source: Place
    policy: CcatPolicy = field(default_factory=CcatPolicy)
    poll_s: float = 30.0
    # A file is complete when older than this and its size unchanged since the scan before.
    min_age_s: float = 30.0
    # Continue as new after this many scans (bounded history).
    scans_per_run: int = 500
    # Sizes the last scan of the previous run saw (carried over by continue-as-new).
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanSourceInput:
    source: str
    min_age_s: float
    # The previous scan's sizes of the files of folders not filed then (relpath -> bytes).
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanSourceReceipt:
    # Observations this scan filed.
    filed: list[str] = field(default_factory=list)
    # Observations filed (now or before) and not packaged yet: their package workflows start.
    ready: list[str] = field(default_factory=list)
    # Observation folders not complete yet, and the sizes of their files for the next scan.
    waiting: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    # Folders whose name is no valid observation id (never filed), the first few.
    invalid: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- steps


class PackageStep(StrEnum):
    ROUTE = "route"
    PACKAGE = "package"
    BUNDLE = "bundle"


class TransferStep(StrEnum):
    CLOSE = "close"
    ROUTE = "route_archive"
    TRANSFER = "transfer"
    UNPACK = "unpack"
    ARCHIVE = "archive"
    REPLICATE = "replicate"


class DeletionStep(StrEnum):
    DELETE = "delete"


class StageStep(StrEnum):
    STAGE = "stage"


class WatchStep(StrEnum):
    SCAN = "scan"


# Values of the `step` search attribute besides the steps.
WAITING = "bundling"  # a transfer workflow waiting for its bundle to fill
CLEANUP = "cleanup"  # archived everywhere; deletions of the SOURCE and BUFFER copies started
DONE = "done"


class NothingFiled(BadInput):
    """A package, bundle or file the step needs is not in the database (not filed, not made)."""


# Named error of a copy whose bytes do not match the checksum they should have: in transit
# it is transient (the transfer runs again); an activity that must not repeat lists it.
CHECKSUM_MISMATCH = ChecksumMismatch.__name__

# Disks and S3 fail transiently: retry with backoff for ever, visibly; bad input at once.
CCAT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[*NON_RETRYABLE, NothingFiled.__name__],
)
# Unpacking finds a corrupt package: unpacking again cannot help, the workflow re-transfers.
UNPACK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[*NON_RETRYABLE, NothingFiled.__name__, CHECKSUM_MISMATCH],
)

PACKAGE_STEPS: Mapping[PackageStep, StepSpec] = MappingProxyType(
    {
        PackageStep.ROUTE: StepSpec(
            "ccat_route_buffer", RouteBufferInput, RouteBufferReceipt, PACKAGE_CREATION,
            timedelta(minutes=1), CCAT_RETRY,
        ),
        # One observation's files: a few GB at disk speed.
        PackageStep.PACKAGE: StepSpec(
            "ccat_package", PackageStepInput, PackageReceipt, PACKAGE_CREATION, timedelta(hours=1), CCAT_RETRY
        ),
        PackageStep.BUNDLE: StepSpec(
            "ccat_bundle", BundleInput, BundleReceipt, TRANSFER_PACKAGE_CREATION,
            timedelta(minutes=1), CCAT_RETRY,
        ),
    }
)  # fmt: skip

TRANSFER_STEPS: Mapping[TransferStep, StepSpec] = MappingProxyType(
    {
        TransferStep.CLOSE: StepSpec(
            "ccat_close_bundle", CloseInput, CloseReceipt, TRANSFER_PACKAGE_CREATION,
            timedelta(hours=1), CCAT_RETRY,
        ),
        TransferStep.ROUTE: StepSpec(
            "ccat_route_archive", RouteArchiveInput, RouteArchiveReceipt, TRANSFER_PACKAGE_CREATION,
            timedelta(minutes=1), CCAT_RETRY,
        ),
        # A bundle of up to the size limit over a long-haul link: hours.
        TransferStep.TRANSFER: StepSpec(
            "ccat_transfer", TransferStepInput, TransferReceipt, TRANSFER, timedelta(hours=6), CCAT_RETRY
        ),
        TransferStep.UNPACK: StepSpec(
            "ccat_unpack", UnpackInput, UnpackReceipt, UNPACKING, timedelta(hours=1), UNPACK_RETRY
        ),
        TransferStep.ARCHIVE: StepSpec(
            "ccat_archive", ArchiveInput, ArchiveReceipt, ARCHIVE_TRANSFER, timedelta(hours=6), CCAT_RETRY
        ),
        TransferStep.REPLICATE: StepSpec(
            "ccat_replicate", ReplicateInput, ArchiveReceipt, ARCHIVE_TRANSFER, timedelta(hours=6), CCAT_RETRY
        ),
    }
)  # fmt: skip

DELETION_STEPS: Mapping[DeletionStep, StepSpec] = MappingProxyType(
    {
        DeletionStep.DELETE: StepSpec(
            "ccat_delete", DeleteStepInput, DeleteReceipt, DELETION, timedelta(minutes=30), CCAT_RETRY
        ),
    }
)

STAGE_STEPS: Mapping[StageStep, StepSpec] = MappingProxyType(
    {
        StageStep.STAGE: StepSpec(
            "ccat_stage", StageStepInput, StageReceipt, STAGING, timedelta(hours=6), CCAT_RETRY
        ),
    }
)

WATCH_STEPS: Mapping[WatchStep, StepSpec] = MappingProxyType(
    {
        # Lists a folder, reads the sha256 of the files of the folders it files: minutes.
        WatchStep.SCAN: StepSpec(
            "ccat_scan_source",
            ScanSourceInput,
            ScanSourceReceipt,
            MONITORING,
            timedelta(minutes=30),
            CCAT_RETRY,
        ),
    }
)

# Every step of the flow, by activity name (status names a pending activity's step).
_ACTIVITIES: list[tuple[str, StrEnum]] = [
    *step_of_activity(PACKAGE_STEPS).items(),
    *step_of_activity(TRANSFER_STEPS).items(),
    *step_of_activity(DELETION_STEPS).items(),
    *step_of_activity(STAGE_STEPS).items(),
    *step_of_activity(WATCH_STEPS).items(),
]
STEP_OF_ACTIVITY: dict[str, StrEnum] = dict(_ACTIVITIES)


class CcatSettings(BaseSettings):
    """The flow's rules (``UNEMBARGO_CCAT_*``): read by the activities that enforce them,
    never passed in a workflow's input, so no input can loosen them."""

    model_config = SettingsConfigDict(env_prefix="UNEMBARGO_CCAT_", extra="ignore")

    # A SOURCE or BUFFER copy is deleted only once the package is ARCHIVED with a verified
    # checksum at this many LONG_TERM_ARCHIVE locations (of distinct sites).
    min_archive_copies: int = 1
    # A bundle takes packages until this many bytes (one package alone may exceed it).
    bundle_limit_bytes: int = 10 * 1024**3
