"""The tape carousel flow's declaration (iDDS's Data Carousel): stage a dataset from tape, file by file.

One workflow per request (``carousel-<scope>-<name>``) adopts or creates the Rucio rule that
stages the dataset to a disk RSE, watches the rule's replica locks on durable timers with
backoff, and publishes exactly one ``file_stagein`` message per file the moment it is available,
then one ``dataset_stagein`` message when the dataset is closed and every file is processed.

    >>> request_workflow_id("data18_13TeV", "data18_13TeV.00348885.RAW")
    'carousel-data18_13TeV-data18_13TeV.00348885.RAW'
    >>> message_id("carousel-s-d", "s", "f1") == message_id("carousel-s-d", "s", "f1")
    True
    >>> source_expression("*", ["TAPE_A", "TAPE_B"])
    '*\\\\TAPE_A\\\\TAPE_B'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.common import RetryPolicy

from unembargo.models.carousel_throttle import ThrottleLimits
from unembargo.models.errors import NON_RETRYABLE
from unembargo.models.flow import StepSpec, step_of_activity
from unembargo.models.names import InvalidName

CAROUSEL_WORKFLOW = "CarouselRequest"
# Signals: a request (the start, and any later one for the same dataset); an operator's decision.
REQUEST_SIGNAL = "request"
DECIDE_SIGNAL = "decide"
# An operator's decisions about a request waiting for them.
RETRY, CHANGE, GIVE_UP = "retry", "change", "give_up"
DECISIONS = (RETRY, CHANGE, GIVE_UP)
# Message types (the STOMP ``type`` header and the body's msg_type), iDDS's names.
FILE_MESSAGE, DATASET_MESSAGE = "file_stagein", "dataset_stagein"

# Rucio scopes and names: letters, digits and ._-: (no '/' at the start, nothing that breaks a DID).
_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,29}$")
_DID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-:/]{0,249}$")


class InvalidRequest(InvalidName):
    """A carousel request whose scope, name or RSEs cannot be used safely."""


class RuleUnusable(InvalidName):
    """A rule given by id that does not stage this dataset (another DID) or is gone."""


def check_request_names(scope: str, name: str) -> None:
    """Raise InvalidRequest unless scope and name are safe Rucio names."""
    if not _SCOPE.match(scope):
        raise InvalidRequest(f"scope {scope!r} is not a Rucio scope (letters, digits, '._-', at most 30)")
    if not _DID_NAME.match(name) or ".." in name:
        raise InvalidRequest(f"name {name!r} is not a safe Rucio name (letters, digits, '._-:/', no '..')")


def request_workflow_id(scope: str, name: str) -> str:
    """Deterministic id: one workflow per dataset, so a second request for it joins the first."""
    check_request_names(scope, name)
    return f"carousel-{scope}-{name}"


def message_id(request_id: str, scope: str, name: str) -> str:
    """The id of the message announcing one DID for one request: the same on every resend."""
    return hashlib.sha256(f"{request_id}\n{scope}:{name}".encode()).hexdigest()[:32]


def source_expression(base: str, excluded: list[str]) -> str:
    """A Rucio RSE expression: ``base`` without the RSEs already tried."""
    return "".join([base, *(f"\\{rse}" for rse in excluded)])


class Step(StrEnum):
    """The flow's activities; also the ``step`` search attribute's values."""

    RULE = "rule"  # adopt or create the dataset's rule
    LOCKS = "locks"  # the rule's replica locks, the dataset's files and whether it is open
    RERULE = "rerule"  # a rule for the stuck files from another source
    PUBLISH = "publish"  # one message to the broker, with a receipt


class Status(StrEnum):
    """A request's status (the ``carousel_status`` search attribute), iDDS's transform statuses."""

    TRANSFORMING = "Transforming"
    OPERATOR = "WaitingOperator"
    FINISHED = "Finished"
    SUBFINISHED = "SubFinished"  # given up with some files never staged
    FAILED = "Failed"  # given up before any file was staged


# Lock states as Rucio names them.
OK, REPLICATING, STUCK = "OK", "REPLICATING", "STUCK"


@dataclass(frozen=True)
class CarouselRequest:
    scope: str
    name: str
    src_rse: str
    dest_rse: str
    rule_id: str | None = None
    max_wait_s: float = 3 * 24 * 3600.0
    priority: int = 0
    # Lifetime of a rule this request creates (None: no expiry); refreshed while staging.
    lifetime_s: int | None = None


@dataclass(frozen=True)
class CarouselPolicy:
    """How a request watches and announces; defaults suit production, tests shorten them."""

    # Lock checks: first after this long, then each interval times backoff, capped; a file
    # that became available resets the interval to the first.
    poll_first_s: float = 5.0
    poll_backoff: float = 1.5
    poll_max_s: float = 30.0
    heartbeat_s: float = 30.0
    # Broker destination and the messages' time to live.
    destination: str = "/queue/carousel"
    ttl_s: int = 7 * 24 * 3600
    # Re-rules from other sources before an operator is asked.
    max_rerules: int = 5


@dataclass(frozen=True)
class CarouselInput:
    request: CarouselRequest
    # Step value -> task queue of the location serving the step's operation.
    queues: dict[str, str]
    policy: CarouselPolicy = field(default_factory=CarouselPolicy)
    # What a run hands its next one (continue-as-new).
    carry: CarouselState | None = None
    # The source tape's throttle workflow (``carousel-throttle-<rse>``): files are ruled only
    # as it grants them; None: one dataset rule stages every file at once.
    throttle: str | None = None


@dataclass(frozen=True)
class RuleInput:
    scope: str
    name: str
    dest_rse: str
    source_expression: str
    rule_id: str | None = None
    lifetime_s: int | None = None


@dataclass(frozen=True)
class RuleReceipt:
    rule_id: str
    adopted: bool


@dataclass(frozen=True)
class LocksInput:
    scope: str
    name: str
    dest_rse: str
    # Rules to read (the dataset's, then any re-rules of stuck files).
    rule_ids: list[str]
    lifetime_s: int | None = None


@dataclass(frozen=True)
class FileLock:
    name: str
    state: str
    path: str | None = None
    bytes: int | None = None
    adler32: str | None = None


@dataclass(frozen=True)
class LocksReceipt:
    # Files of the dataset now, and whether more may come.
    files: list[str]
    open: bool
    # Name -> its best lock over the rules read (OK beats REPLICATING beats STUCK).
    locks: dict[str, FileLock]
    # Rules read that no longer exist (cancelled or expired).
    gone: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReruleInput:
    scope: str
    files: list[str]
    dest_rse: str
    # RSEs never to stage from again; the new source is any other holding every file.
    excluded: list[str]
    lifetime_s: int | None = None
    # An operator's choice of source (then ``excluded`` is not consulted).
    source: str | None = None


@dataclass(frozen=True)
class ReruleReceipt:
    # The source chosen and the file rules (None, []: no other source holds the files).
    source: str | None
    rule_ids: list[str]


@dataclass(frozen=True)
class PublishInput:
    destination: str
    message_id: str
    type: str
    body: str
    ttl_s: int


@dataclass(frozen=True)
class PublishReceipt:
    message_id: str
    receipt: str


@dataclass(frozen=True)
class Decision:
    """An operator's decision: retry (sources tried are forgotten), change source and/or
    destination, or give_up (the request ends with what was staged)."""

    action: str
    src_rse: str | None = None
    dest_rse: str | None = None


@dataclass
class Stuck:
    """Evidence of files that did not stage: which, from where, why, when."""

    files: list[str]
    source: str
    reason: str
    at: str


@dataclass
class CarouselState:
    """What the ``state`` query (and the run's result) says, with iDDS's counter names."""

    request_id: str
    scope: str
    name: str
    src_rse: str
    dest_rse: str
    transform_status: str = Status.TRANSFORMING.value
    in_status: str = "New"  # New, Processing (dataset open), Closed
    out_status: str = "New"  # New, Processing, Finished
    in_total_files: int = 0
    in_processed_files: int = 0  # files whose staging ended (available or given up)
    out_total_files: int = 0
    output_processed_files: int = 0  # files announced
    rule_ids: list[str] = field(default_factory=list)
    adopted: bool = False
    # Sources tried (never used again until an operator retries).
    sources: list[str] = field(default_factory=list)
    # Files announced, in the order they became available.
    announced: list[str] = field(default_factory=list)
    stuck: list[Stuck] = field(default_factory=list)
    operator: str | None = None
    decisions: list[str] = field(default_factory=list)
    checks: int = 0
    requests: int = 0
    # Files not available yet -> since when they wait on their current source (ISO time).
    waiting_since: dict[str, str] = field(default_factory=dict)
    given_up: list[str] = field(default_factory=list)
    rerules: int = 0
    # Throttled requests: files ruled as granted (in that order), the grant total received,
    # and the totals last told to the throttle (wanted, done).
    throttle: str | None = None
    granted: list[str] = field(default_factory=list)
    grant_total: int = 0
    asked: tuple[int, int] = (0, 0)


CAROUSEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    non_retryable_error_types=[*NON_RETRYABLE, InvalidRequest.__name__, RuleUnusable.__name__],
)

_MINUTE = timedelta(minutes=1)
STEPS: Mapping[Step, StepSpec] = MappingProxyType(
    {
        # One or two Rucio calls each.
        Step.RULE: StepSpec("carousel_rule", RuleInput, RuleReceipt, "staging", 5 * _MINUTE, CAROUSEL_RETRY),
        Step.LOCKS: StepSpec(
            "carousel_locks", LocksInput, LocksReceipt, "staging", 5 * _MINUTE, CAROUSEL_RETRY
        ),
        Step.RERULE: StepSpec(
            "carousel_rerule", ReruleInput, ReruleReceipt, "staging", 5 * _MINUTE, CAROUSEL_RETRY
        ),
        # One frame and its receipt; no receipt in time raises, and the retry resends (backoff).
        Step.PUBLISH: StepSpec(
            "carousel_publish", PublishInput, PublishReceipt, "monitoring", _MINUTE, CAROUSEL_RETRY
        ),
    }
)

STEP_OF_ACTIVITY = step_of_activity(STEPS)


class CarouselSettings(BaseSettings):
    """Where the flow's steps run and where it publishes (``UNEMBARGO_CAROUSEL_*``)."""

    model_config = SettingsConfigDict(env_prefix="UNEMBARGO_CAROUSEL_", extra="ignore")

    # The processing location (``unembargo locations add``) whose staging and monitoring queues
    # run the steps: it reaches Rucio and the broker.
    location: str = "carousel-processing"
    # The STOMP broker: the local stack's embedded one by default (RabbitMQ/ActiveMQ in production).
    broker_host: str = "127.0.0.1"
    broker_port: int = 61613
    broker_login: str | None = None
    broker_passcode_file: Path | None = None
    # STOMP's host header: RabbitMQ's virtual host ("/"); None sends the machine's name (coilmq).
    broker_vhost: str | None = None
    broker_timeout_s: float = 10.0
    # Tapes throttled (source RSE -> limits, JSON in the environment, e.g.
    # ``{"TAPE": {"staging": 200, "queued": 2000}}``); a tape not listed is not throttled.
    throttles: dict[str, ThrottleLimits] = {}
