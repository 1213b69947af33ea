"""Session fixtures: the real local stack, and per-session isolation on top of it.

The stack (PostgreSQL, S3, Temporal, Rucio) runs under ``.dev/test-stack`` on its
own ports, so tests never touch a developer's ``unembargo dev`` stack. It is
reused when already up and stopped at the end only if this session started it.
Each session then gets its own bucket, butler repos, destination root, Rucio RSE,
database and task queues, so sessions and tests do not see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import stack_settings

from unembargo.devstack import rucio_server, s3, stack
from pydantic import SecretStr

from unembargo.models.settings import Settings

TEST_SERVICES = ("postgres", "s3", "temporal", "rucio")


@pytest.fixture(scope="session")
def stack_up() -> Iterator[Settings]:
    """Bring up (or reuse) the services; stop at the end those this session started."""
    base = stack_settings()
    started = []
    for service in stack.SERVICES:
        if service.name in TEST_SERVICES and service.ensure(base) == "started":
            started.append(service)
    yield base
    for service in reversed(started):
        service.stop(base)


@pytest.fixture(scope="session")
def settings(stack_up: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """This session's own bucket, repos, destination, RSE, database and queues."""
    from unembargo.activities.rucio_client import connect
    from unembargo.devstack.butler_repos import ensure_repos

    root = tmp_path_factory.mktemp("unembargo")
    tag = uuid.uuid4().hex[:8]
    own = stack_up.model_copy(
        update={
            "state_dir": root / "state",
            "s3_bucket": f"embargo-{tag}",
            "embargo_butler": str(root / "butler" / "embargo"),
            "main_butler": str(root / "butler" / "main"),
            # A scope of its own keeps this session's DIDs apart from any other's.
            "rucio_scope": f"t{tag}",
            "dest_root": root / "dest" / f"t{tag}",
            "rucio_rse": f"TEST_{tag.upper()}",
            "database_url": SecretStr(f"sqlite:///{root / 'unembargo.db'}"),
            "workflow_task_queue": f"unembargo-workflows-{tag}",
        }
    )
    own.dest_root.mkdir(parents=True)
    s3.ensure_bucket(own)
    ensure_repos(own)
    rucio = connect(own)
    rucio_server.ensure_scope(rucio, own.rucio_account, own.rucio_scope)
    rucio_server.ensure_rse(rucio, own.rucio_rse, own.rse_prefix)
    return own



@pytest.fixture(scope="session")
def locations(settings: Settings) -> list[str]:
    """This session's two locations (destination disk, Rucio); their queues are its own."""
    from sqlmodel import Session

    from unembargo.models.tables import Location, connect, upsert_location

    tag = settings.rucio_rse.removeprefix("TEST_").lower()
    rows = [
        Location(name=f"dest-{tag}", site="test", kind="destination", storage=str(settings.dest_root)),
        Location(name=f"rucio-{tag}", site="test", kind="rucio", storage=settings.rucio_host),
    ]
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for row in rows:
            upsert_location(session, row)
    return [row.name for row in rows]


@pytest.fixture(scope="session")
async def client(stack_up: Settings):  # type: ignore[no-untyped-def]
    """A Temporal client of the test stack."""
    from temporalio.client import Client

    return await Client.connect(stack_up.temporal_address)
