"""The exposure flow's step table (models/exposure.STEPS) and what derives from it: the
worker's registrations and queues (workers/worker.py), the workflow's calls by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from sqlmodel import Session
from temporalio.activity import _Definition
from temporalio.testing import WorkflowEnvironment

from unembargo.activities.context import Resources
from unembargo.models import names
from unembargo.models.errors import NON_RETRYABLE
from unembargo.models.exposure import DESTINATION, RUCIO, STEP_OF_ACTIVITY, STEPS, Step
from unembargo.models.flow import location_kinds, steps_at
from unembargo.models.locations import DataLocation, location_queues
from unembargo.models.schedule import SELECT_STEP
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, step_queues, upsert_location
from unembargo.workers import worker
from unembargo.workflows.exposure import ExposureWorkflow
from unembargo.workflows.select import SelectAndStartWorkflow


def activity_name(fn: Callable[..., Any]) -> str:
    return _Definition.must_from_callable(fn).name


def test_the_table_lists_every_step_in_flow_order() -> None:
    assert list(STEPS) == list(Step)


def test_every_step_is_implemented_exactly_once_under_its_name() -> None:
    found = worker.step_activities(Resources(Settings()))
    assert list(found) == list(Step)
    assert {step: activity_name(fn) for step, fn in found.items()} == {
        step: spec.activity for step, spec in STEPS.items()
    }
    assert len({spec.activity for spec in STEPS.values()}) == len(STEPS)
    assert STEP_OF_ACTIVITY == {spec.activity: step for step, spec in STEPS.items()}


def test_a_step_without_an_implementation_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    renamed = {**STEPS, Step.TAG: dataclasses.replace(STEPS[Step.TAG], activity="no_such_activity")}
    monkeypatch.setattr(worker, "STEPS", MappingProxyType(renamed))
    with pytest.raises(LookupError, match="step tag: 0 implementations of activity 'no_such_activity'"):
        worker.step_activities(Resources(Settings()))


def test_steps_by_location_kind() -> None:
    assert location_kinds(STEPS) == [DESTINATION, RUCIO]
    assert steps_at(STEPS, DESTINATION) == [Step.ZIP, Step.EXPORT, Step.INGEST]
    assert steps_at(STEPS, RUCIO) == [Step.REGISTER, Step.TAG]
    # Every step at exactly one kind, in flow order.
    assert [s for kind in location_kinds(STEPS) for s in steps_at(STEPS, kind)] == list(Step)


@pytest.mark.parametrize("step", list(Step))
def test_inputs_and_receipts_are_dataclasses_and_policies_stop_on_bad_input(step: Step) -> None:
    spec = STEPS[step]
    assert dataclasses.is_dataclass(spec.input) and dataclasses.is_dataclass(spec.receipt)
    assert spec.timeout.total_seconds() > 0
    assert set(NON_RETRYABLE) <= set(spec.retry.non_retryable_error_types or [])
    assert spec.retry.maximum_attempts == 0, "transient failures retry until fixed, visibly"


def _locations(path: Path) -> Settings:
    settings = Settings(database_url=f"sqlite:///{path / 'db.sqlite'}", dest_root=path)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        upsert_location(
            session,
            DataLocation(
                name="slac-dest",
                site="SLAC",
                type="long_term_archive",
                storage="disk",
                path=str(path),
                operations=DESTINATION,
            ),
        )
        upsert_location(session, DataLocation(name="slac-rucio", site="SLAC", type="catalogue",
                                              storage="service", endpoint="http://rucio"))  # fmt: skip
    return settings


async def test_the_worker_serves_each_location_the_steps_of_its_operations(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = _locations(tmp_path)
    built = worker.build_workers(env.client, settings, ["slac-dest", "slac-rucio"])
    # This flow's activities (other flows' may share the queues).
    ours = set(STEP_OF_ACTIVITY) | {names.SELECT_ACTIVITY}
    served = {
        w.task_queue: sorted(ours & {activity_name(fn) for fn in w.config().get("activities", [])})
        for w in built
    }
    with Session(connect(settings.database_url.get_secret_value())) as session:
        [dest], [rucio] = location_queues(session, "slac-dest"), location_queues(session, "slac-rucio")
    assert (dest, rucio) == ("slac_slac-dest_unembargo", "slac_slac-rucio_registration")
    selection = [names.SELECT_ACTIVITY] if STEPS[SELECT_STEP].location == DESTINATION else []
    assert served == {
        dest: sorted([STEPS[s].activity for s in steps_at(STEPS, DESTINATION)] + selection),
        rucio: sorted(STEPS[s].activity for s in steps_at(STEPS, RUCIO)),
        settings.workflow_task_queue: [],
    }
    [flows] = [w.config().get("workflows", []) for w in built if w.task_queue == settings.workflow_task_queue]
    assert {ExposureWorkflow, SelectAndStartWorkflow} <= set(flows)
    # And the queues a run is started with send each step to the location that serves it.
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    assert all(STEPS[step].activity in served[queues[step]] for step in Step)
