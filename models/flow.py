"""What a flow declares about each of its steps, in one place.

A flow is a ``StrEnum`` of its steps and one ``StepSpec`` per step; the worker's
registrations, the task queues, the ``step`` search attribute's values, status and
reconcile all derive from that table, so adding a step is one edit.

    >>> from unembargo.models.exposure import STEPS, Step
    >>> STEPS[Step.ZIP].activity
    'zip_exposure'
    >>> steps_at(STEPS, "registration")
    [<Step.REGISTER: 'register'>, <Step.TAG: 'tag'>]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TypeVar

from temporalio.common import RetryPolicy

S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True)
class StepSpec:
    """One step: the activity that does it, what it takes and returns, where and how long it runs."""

    # Registered activity name: workflows call activities by name, never importing them.
    activity: str
    # The one dataclass the activity takes, and the receipt it returns (decoded by the workflow).
    input: type
    receipt: type
    # Kind of location whose task queue serves the step (the storage or service it needs).
    location: str
    # Upper bound on one attempt (start_to_close); the run's policy sets the heartbeat timeout.
    timeout: timedelta
    retry: RetryPolicy


def steps_at(specs: Mapping[S, StepSpec], kind: str) -> list[S]:
    """The steps a location of ``kind`` serves, in flow order."""
    return [step for step, spec in specs.items() if spec.location == kind]


def location_kinds(specs: Mapping[S, StepSpec]) -> list[str]:
    """Every location kind the flow needs, in order of first use."""
    return list(dict.fromkeys(spec.location for spec in specs.values()))


def step_of_activity(specs: Mapping[S, StepSpec]) -> dict[str, S]:
    """Activity name -> step, for status, spans and log lines."""
    return {spec.activity: step for step, spec in specs.items()}
