"""Locations on the real stack: `unembargo locations queues` lists every queue from the database,
and `unembargo locations health` shows, from Temporal's own poller records (DescribeTaskQueue),
the real worker polling its location's queues and no poller on a queue no worker serves; the
migrations bring a new PostgreSQL database, and one the former create_all made, to every head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg
from sqlmodel import Session, select

from support import WorkerProcess, location_row, poll_until
from unembargo.devstack import postgres
from unembargo.models.locations import Operation, location_queues
from unembargo.models.migrations import current, heads
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect, connect, upsert_location

# What the former create_all made on PostgreSQL, with a row in each table.
OLD_SCHEMA = """
CREATE TABLE site (name VARCHAR NOT NULL PRIMARY KEY, description VARCHAR NOT NULL);
CREATE TABLE location (name VARCHAR NOT NULL PRIMARY KEY, site VARCHAR NOT NULL REFERENCES site (name),
    kind VARCHAR NOT NULL, storage VARCHAR NOT NULL, priority INTEGER NOT NULL, active BOOLEAN NOT NULL);
CREATE INDEX ix_location_kind ON location (kind);
CREATE TABLE effect (id SERIAL PRIMARY KEY, obs_id VARCHAR NOT NULL, step VARCHAR NOT NULL,
    action VARCHAR NOT NULL, at TIMESTAMP WITHOUT TIME ZONE NOT NULL);
CREATE INDEX ix_effect_obs_id ON effect (obs_id);
INSERT INTO site VALUES ('SLAC', '');
INSERT INTO location VALUES ('slac-dest', 'SLAC', 'destination', '/sdf/data/rubin/raw', 10, true);
INSERT INTO effect (obs_id, step, action, at) VALUES ('MC_O_20251231_000010', 'zip', 'write-zip', now());
"""


def unembargo(settings: Settings, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", "locations", *args, "--json"],
        env={**os.environ, **settings.environment()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_health_shows_the_worker_polling_and_none_on_an_unserved_queue(
    settings: Settings, locations: list[str], worker: WorkerProcess
) -> None:
    idle = f"idle-{uuid.uuid4().hex[:8]}"
    with Session(connect(settings.database_url.get_secret_value())) as session:
        # Inactive: no later test's steps may be routed to a queue nobody serves.
        upsert_location(session, location_row(settings, Operation.UNEMBARGO, idle, "test", active=False))
    queues = {row["queue"]: row for row in unembargo(settings, "queues")}
    dest, rucio = locations
    assert queues[f"test_{dest}_unembargo"]["operation"] == "unembargo"
    assert queues[f"test_{rucio}_registration"]["location"] == rucio
    assert queues[f"test_{idle}_unembargo"]["site"] == "test"
    assert settings.workflow_task_queue in queues

    health: dict[str, list[dict[str, Any]]] = {}
    # Temporal lists the pollers of the last minutes: an earlier module's worker may still show.
    ours = f"{worker.proc.pid}@"  # the SDK's default identity: pid@host

    def polled() -> bool:
        health.clear()
        health.update({row["queue"]["queue"]: row["pollers"] for row in unembargo(settings, "health")})
        served = (f"test_{dest}_unembargo", f"test_{rucio}_registration", settings.workflow_task_queue)
        return all(any(p["identity"].startswith(ours) for p in health.get(q, [])) for q in served)

    await poll_until(polled, 90, "the worker's pollers in DescribeTaskQueue", interval=1)
    [activity_poller] = [
        p
        for p in health[f"test_{dest}_unembargo"]
        if p["task_type"] == "activity" and p["identity"].startswith(ours)
    ]
    assert activity_poller["last_access"]
    assert any(p["task_type"] == "workflow" for p in health[settings.workflow_task_queue])
    assert health[f"test_{idle}_unembargo"] == []


def test_migrations_on_postgresql_fresh_and_from_create_all(stack_up: Settings) -> None:
    """The same revisions bring a new PostgreSQL database, and one the former create_all made
    (rows included), to every head."""
    admin = postgres.url(stack_up)
    names = [f"unembargo_migrate_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        fresh, old = (admin.rsplit("/", 1)[0] + f"/{name}" for name in names)
        with psycopg.connect(old, autocommit=True) as conn:
            for statement in OLD_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)  # type: ignore[call-overload]
        for url in (fresh, old):
            engine = connect(url)
            with engine.connect() as conn:
                assert heads() <= current(conn)
            with Session(engine) as session:
                upsert_location(session, location_row(stack_up, Operation.REGISTRATION, "pg-rucio", "pg"))
                assert location_queues(session, "pg-rucio") == ["pg_pg-rucio_registration"]
            engine.dispose()
        with Session(connect(old)) as session:
            assert location_queues(session, "slac-dest") == [
                "slac_slac-dest_unembargo",
                "unembargo-loc-slac-dest",
            ]
            assert [e.action for e in session.exec(select(Effect))] == ["write-zip"]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
