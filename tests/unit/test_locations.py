"""The location model (models/locations.py) and the schema's migrations (models/migrations):
the operation matrix, queue names, routing by priority with failover, a fresh database and one
made by the former ``create_all`` brought to every head."""

from __future__ import annotations

import doctest
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlmodel import Session, select
from temporalio.activity import _Definition
from temporalio.testing import WorkflowEnvironment

from unembargo.models import locations, names
from unembargo.models.exposure import DESTINATION, RUCIO, STEPS
from unembargo.models.flow import steps_at
from unembargo.models.locations import (
    OPERATIONS,
    DataLocation,
    LocationType,
    NoLocation,
    Operation,
    Site,
    StorageType,
    best_location,
    location_queues,
    task_queue,
    upsert_location,
)
from unembargo.models.migrations import current, heads
from unembargo.models.names import InvalidName
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect, connect, step_queues
from unembargo.workers import worker

T, Op = LocationType, Operation


def test_the_matrix_is_issue_15s() -> None:
    assert OPERATIONS[T.SOURCE] == {Op.PACKAGE_CREATION, Op.DELETION, Op.MONITORING}
    assert OPERATIONS[T.BUFFER] == {
        Op.TRANSFER_PACKAGE_CREATION,
        Op.TRANSFER,
        Op.UNPACKING,
        Op.DELETION,
        Op.MONITORING,
    }
    assert OPERATIONS[T.LONG_TERM_ARCHIVE] == {Op.ARCHIVE_TRANSFER, Op.MONITORING}
    assert OPERATIONS[T.PROCESSING] == {Op.STAGING, Op.DELETION, Op.MONITORING}
    # The unembargo flow's operations: every step needs one that some location type serves.
    assert {Operation(spec.location) for spec in STEPS.values()} == {Op.UNEMBARGO, Op.REGISTRATION}
    assert Op.UNEMBARGO not in OPERATIONS[T.LONG_TERM_ARCHIVE], (
        "an archive serves unembargo only when it says so"
    )


def test_queue_names_are_site_location_operation() -> None:
    assert (
        task_queue("tel", "buffer-1", Op.TRANSFER_PACKAGE_CREATION)
        == "tel_buffer-1_transfer_package_creation"
    )
    assert task_queue("cologne", "lta", "archive_transfer") == "cologne_lta_archive_transfer"
    for bad in ("Tel", "t_l", "-t", ""):
        with pytest.raises(InvalidName):
            task_queue(bad, "x", Op.TRANSFER)
    with pytest.raises(InvalidName):
        task_queue("tel", "../x", Op.TRANSFER)
    with pytest.raises(ValueError):
        task_queue("tel", "x", "teleport")


def _add(session: Session, name: str, type: LocationType, site: str = "Telescope", **fields: object) -> None:
    storage = fields.pop("storage", StorageType.DISK)
    upsert_location(session, DataLocation(name=name, site=site, type=type, storage=storage,
                                          path=f"/data/{name}", **fields))  # fmt: skip


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(connect(f"sqlite:///{tmp_path / 'db.sqlite'}"))


def test_a_location_serves_the_queues_of_its_type(session: Session) -> None:
    _add(session, "buf-a", T.BUFFER)
    assert session.get(Site, "Telescope").short_name == "telescope"  # type: ignore[union-attr]
    assert location_queues(session, "buf-a") == [
        f"telescope_buf-a_{op}" for op in ("deletion", "monitoring", "transfer", "transfer_package_creation",
                                           "unpacking")
    ]  # fmt: skip
    _add(session, "lta", T.LONG_TERM_ARCHIVE, site="Cologne", operations="unembargo")
    assert location_queues(session, "lta") == ["cologne_lta_unembargo"]
    with pytest.raises(InvalidName, match="cannot serve staging"):
        _add(session, "lta2", T.LONG_TERM_ARCHIVE, operations="staging")
    with pytest.raises(NoLocation, match="known: buf-a, lta"):
        location_queues(session, "nowhere")


def test_best_location_prefers_lower_priority_skips_inactive_and_fails_over(session: Session) -> None:
    _add(session, "buf-b", T.BUFFER, priority=10)
    _add(session, "buf-a", T.BUFFER, priority=20)
    _add(session, "buf-c", T.BUFFER, priority=10)
    _add(session, "far", T.BUFFER, site="Elsewhere", priority=0, active=True)
    assert best_location(session, T.BUFFER).name == "far"
    assert best_location(session, T.BUFFER, site="Telescope").name == "buf-b", "a tie goes to the first name"
    assert best_location(session, T.BUFFER, site="Telescope", exclude=["buf-b"]).name == "buf-c"
    # The primary made inactive: new work fails over to the secondary.
    _add(session, "buf-b", T.BUFFER, priority=10, active=False)
    assert best_location(session, T.BUFFER, site="Telescope").name == "buf-c"
    _add(session, "buf-c", T.BUFFER, priority=10, active=False)
    assert best_location(session, T.BUFFER, site="Telescope").name == "buf-a"
    with pytest.raises(NoLocation, match="no active buffer location at site 'Telescope'"):
        best_location(session, T.BUFFER, site="Telescope", exclude=["buf-a"])
    with pytest.raises(NoLocation, match="no active processing location"):
        best_location(session, T.PROCESSING)


def test_unembargo_steps_go_only_to_archives_that_serve_unembargo(session: Session) -> None:
    _add(session, "aaa-archive", T.LONG_TERM_ARCHIVE, priority=-5)  # another flow's archive
    _add(session, "dest-2", T.LONG_TERM_ARCHIVE, operations="unembargo", priority=5)
    _add(session, "dest-1", T.LONG_TERM_ARCHIVE, operations="unembargo", priority=1)
    upsert_location(session, DataLocation(name="rucio", site="Telescope", type=T.CATALOGUE,
                                          storage=StorageType.SERVICE, endpoint="https://rucio"))  # fmt: skip
    queues = step_queues(session)
    assert queues["zip"] == queues["ingest"] == "telescope_dest-1_unembargo"
    assert queues["register"] == queues["tag"] == "telescope_rucio_registration"
    assert step_queues(session, at=["dest-2", "rucio"])["zip"] == "telescope_dest-2_unembargo"


def test_the_module_examples_run() -> None:
    assert doctest.testmod(locations).failed == 0


def test_a_fresh_database_is_at_every_head(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    with engine.connect() as conn:
        assert heads() <= current(conn)
        assert {"site", "datalocation", "effect", "alembic_version"} <= set(inspect(conn).get_table_names())
    # Connecting again changes nothing.
    connect(f"sqlite:///{tmp_path / 'fresh.sqlite'}")


# The schema the former create_all made (before migrations), as SQLite recorded it.
OLD_SCHEMA = """
CREATE TABLE site (name VARCHAR NOT NULL, description VARCHAR NOT NULL, PRIMARY KEY (name));
CREATE TABLE location (name VARCHAR NOT NULL, site VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    storage VARCHAR NOT NULL, priority INTEGER NOT NULL, active BOOLEAN NOT NULL, PRIMARY KEY (name),
    FOREIGN KEY(site) REFERENCES site (name));
CREATE INDEX ix_location_kind ON location (kind);
CREATE TABLE effect (id INTEGER NOT NULL, obs_id VARCHAR NOT NULL, step VARCHAR NOT NULL,
    action VARCHAR NOT NULL, at DATETIME NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_effect_obs_id ON effect (obs_id);
INSERT INTO site VALUES ('SLAC', 'the archive'), ('slac', '');
INSERT INTO location VALUES ('slac-dest', 'SLAC', 'destination', '/sdf/data/rubin/raw', 10, 1),
    ('slac-dest-old', 'SLAC', 'destination', '/sdf/old', 0, 0),
    ('slac_rucio', 'slac', 'rucio', 'https://rucio.slac', 0, 1);
INSERT INTO effect VALUES (1, 'MC_O_20251231_000010', 'zip', 'write-zip', '2025-12-31 00:00:00');
"""


def test_a_database_made_by_create_all_upgrades_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    engine = connect(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert heads() <= current(conn)
        assert "location" not in inspect(conn).get_table_names()
    with Session(engine) as session:
        assert [(e.obs_id, e.action) for e in session.exec(select(Effect))] == [
            ("MC_O_20251231_000010", "write-zip")
        ]
        shorts = {s.name: s.short_name for s in session.exec(select(Site))}
        assert shorts == {"SLAC": "slac", "slac": "slac-2"}
        dest = session.get(DataLocation, "slac-dest")
        assert dest is not None
        assert (dest.type, dest.storage, dest.path, dest.served()) == (
            "long_term_archive",
            "disk",
            "/sdf/data/rubin/raw",
            {Op.UNEMBARGO},
        )
        # Highest priority was preferred; now the lowest is, in the same order.
        assert dest.priority == -10
        old = session.get(DataLocation, "slac-dest-old")
        assert old is not None and old.priority == 0 and not old.active
        # Workflows started before still name the former queues: the workers keep serving them.
        assert location_queues(session, "slac-dest") == [
            "slac_slac-dest_unembargo",
            "unembargo-loc-slac-dest",
        ]
        assert location_queues(session, "slac_rucio") == [
            "slac-2_slac_rucio_registration",
            "unembargo-loc-slac_rucio",
        ]
        queues = step_queues(session)
        assert (
            queues["zip"] == "slac_slac-dest_unembargo" and queues["tag"] == "slac-2_slac_rucio_registration"
        )
        # Re-adding a migrated location keeps its legacy queue.
        again = DataLocation(
            name="slac-dest",
            site="SLAC",
            type=T.LONG_TERM_ARCHIVE,
            storage=StorageType.DISK,
            path="/sdf",
            operations="unembargo",
        )
        upsert_location(session, again)
        assert location_queues(session, "slac-dest")[-1] == "unembargo-loc-slac-dest"


def test_a_kind_the_migration_does_not_know_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "odd.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA + "INSERT INTO location VALUES ('odd', 'SLAC', 'tape', '/t', 0, 1);")
    with pytest.raises(RuntimeError, match="location 'odd' has kind 'tape'"):
        connect(f"sqlite:///{path}")


async def test_a_worker_serves_a_migrated_locations_legacy_queue_with_its_former_steps(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Workflows started before the migration call ``unembargo-loc-<name>``: still polled, with
    every activity the location's former kind ran."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    settings = Settings(database_url=f"sqlite:///{path}", dest_root=tmp_path)
    built = worker.build_workers(env.client, settings, ["slac-dest", "slac_rucio"], serve_workflows=False)
    served = {
        w.task_queue: {_Definition.must_from_callable(fn).name for fn in w.config().get("activities", [])}
        for w in built
    }
    zip_steps = {STEPS[s].activity for s in steps_at(STEPS, DESTINATION)} | {names.SELECT_ACTIVITY}
    rucio_steps = {STEPS[s].activity for s in steps_at(STEPS, RUCIO)}
    assert zip_steps <= served["unembargo-loc-slac-dest"] == served["slac_slac-dest_unembargo"]
    # (Other flows' activities may share an operation's queue.)
    assert rucio_steps <= served["unembargo-loc-slac_rucio"] == served["slac-2_slac_rucio_registration"]
    # The former queue names are exactly what those workflows' inputs carry.
    assert names.location_queue("slac-dest") == "unembargo-loc-slac-dest"
