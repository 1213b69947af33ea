"""The local stack's worker serves every local location, the rawintegrity flow's among them, so
``unembargo rawintegrity put`` right after ``unembargo dev up`` needs no other worker."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from unembargo.client.rawintegrity import route
from unembargo.devstack import tape, worker
from unembargo.models.locations import Operation, get_location, location_queues, operation_queues
from unembargo.models.rawintegrity import STEPS, RawIntegritySettings
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, upsert_location


def test_the_dev_worker_serves_every_queue_of_the_rawintegrity_flow(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", state_dir=tmp_path / "state")
    config = RawIntegritySettings()
    locations = worker.local_locations(settings)
    names = [loc.name for loc in locations]
    assert {config.online_location, config.tape_location, "local-rucio"} <= set(names)
    assert [loc.path for loc in tape.flow_locations(settings) if loc.name == config.tape_location] == [
        str(tape.root_of(settings))
    ]
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for loc in locations:
            upsert_location(session, loc)
        served = {q for name in names for q in location_queues(session, name)}
        where = route(session, config)
        flow_ops = {
            op
            for name in (config.online_location, config.tape_location)
            for op in operation_queues(session, get_location(session, name))
        }
    # Every step of a file routes to a queue the stack's worker polls...
    assert set(where.queues.values()) <= served
    # ...and the flow's locations have no queue without an activity of the flow (the worker's
    # health waits for a poller on each).
    assert flow_ops == {Operation(spec.location) for spec in STEPS.values()} - {Operation.REGISTRATION}
