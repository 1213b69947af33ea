"""The CCAT flow's step tables (models/ccat.py) and what derives from them: each step's
activity implemented once under its name, its operation one of the location model's and
served by a location type of the matrix, its input and receipt dataclasses."""

from __future__ import annotations

import dataclasses

import pytest
from temporalio.activity import _Definition

from unembargo.activities.ccat import CcatActivities, ccat_activities
from unembargo.activities.context import Resources
from unembargo.models import ccat as c
from unembargo.models.flow import StepSpec
from unembargo.models.locations import OPERATIONS, Operation
from unembargo.models.settings import Settings

SPECS: list[StepSpec] = [
    spec
    for table in (c.PACKAGE_STEPS, c.TRANSFER_STEPS, c.DELETION_STEPS, c.STAGE_STEPS, c.WATCH_STEPS)
    for spec in table.values()
]


def test_every_step_is_implemented_exactly_once_under_its_name() -> None:
    registered = ccat_activities(CcatActivities(Resources(Settings())))
    names = [_Definition.must_from_callable(fn).name for fns in registered.values() for fn in fns]
    assert sorted(names) == sorted(spec.activity for spec in SPECS)
    assert sorted(c.STEP_OF_ACTIVITY) == sorted(names)
    for operation, fns in registered.items():
        for fn in fns:
            name = _Definition.must_from_callable(fn).name
            assert next(s for s in SPECS if s.activity == name).location == operation


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.activity)
def test_each_step_runs_where_the_matrix_says(spec: StepSpec) -> None:
    operation = Operation(spec.location)
    assert any(operation in ops for ops in OPERATIONS.values())
    assert dataclasses.is_dataclass(spec.input) and dataclasses.is_dataclass(spec.receipt)
    assert "DeletionRefused" in (spec.retry.non_retryable_error_types or [])


def test_only_unpacking_stops_on_a_checksum_mismatch() -> None:
    stops = [s.activity for s in SPECS if c.CHECKSUM_MISMATCH in (s.retry.non_retryable_error_types or [])]
    assert stops == ["ccat_unpack"]
