"""Session fixtures: the real local stack, and per-session isolation on top of it.

The stack (PostgreSQL, S3, Temporal, Rucio) runs under ``.dev/test-stack`` on its
own ports, so tests never touch a developer's ``unembargo dev`` stack. It is
reused when already up; the last session to end stops the services a test session
started (never one a developer started), so parallel sessions (pytest-xdist) leave
nothing running.
Each session then gets its own bucket, butler repos, destination root, Rucio scope
and RSE, database and task queues, so sessions and tests do not see each other's
data; a module that must not share even the session's uses ``module_settings``.
"""

from __future__ import annotations

import asyncio
import fcntl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr
from temporalio.client import Client

from support import STACK_DIR, WorkerProcess, add_locations, stack_settings
from unembargo.devstack import rucio_server, stack, temporal
from unembargo.models.settings import Settings

if TYPE_CHECKING:
    from rucio.client import Client as RucioClient

TEST_SERVICES = ("postgres", "s3", "temporal", "rucio")


@pytest.fixture(scope="session")
def stack_up() -> Iterator[Settings]:
    """Bring up (or reuse) the services; stop at the end those this session started."""
    base = stack_settings()
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    # Every session holds users.lock shared while it runs, so the one that started the
    # services cannot stop them under another that reused them; up.lock makes two
    # sessions starting together take turns instead of both starting each service.
    with open(STACK_DIR / "users.lock", "a") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        with open(STACK_DIR / "up.lock", "a") as up:
            fcntl.flock(up, fcntl.LOCK_EX)
            started = {
                service.name
                for service in stack.SERVICES
                if service.name in TEST_SERVICES and service.ensure(base) == "started"
            }
            if started:
                STARTED.write_text("\n".join(sorted(started | _started_by_tests())))
        yield base
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another session still uses them; the last one out stops them
        by_tests = _started_by_tests()
        for service in reversed(stack.SERVICES):
            if service.name in by_tests:
                service.stop(base)
        STARTED.unlink(missing_ok=True)


# Services some test session started (and so the last session out stops).
STARTED = STACK_DIR / "started-by-tests"


def _started_by_tests() -> set[str]:
    return set(STARTED.read_text().split()) if STARTED.exists() else set()


def isolate(base: Settings, root: Path) -> Settings:
    """``base`` with a bucket, butler repos, destination, Rucio scope and RSE, database
    and workflow queue of its own under ``root``, all created."""
    from unembargo.devstack.butler_repos import ensure_repos

    tag = uuid.uuid4().hex[:8]
    own = base.model_copy(
        update={
            "state_dir": root / "state",
            "s3_bucket": f"embargo-{tag}",
            "embargo_butler": str(root / "butler" / "embargo"),
            "main_butler": str(root / "butler" / "main"),
            # A scope of its own keeps these DIDs apart from any other's (Rucio never deletes
            # DIDs); the destination's last component is the scope, so PFN = dest_root/name.
            "rucio_scope": f"t{tag}",
            "dest_root": root / "dest" / f"t{tag}",
            "rucio_rse": f"TEST_{tag.upper()}",
            # model_copy does not validate: pass the SecretStr the field holds.
            "database_url": SecretStr(f"sqlite:///{root / 'unembargo.db'}"),
            "workflow_task_queue": f"unembargo-workflows-{tag}",
            # Workflow ids are per exposure: a namespace of its own keeps sessions apart.
            "temporal_namespace": f"test-{tag}",
        }
    )
    own.dest_root.mkdir(parents=True)
    ensure_repos(own)  # the bucket first, then both repos
    rucio_server.ensure_catalog(own)  # scope, RSE, and a check that PFNs land on dest_root
    asyncio.run(_register_namespace(own))
    return own


@pytest.fixture(scope="session")
def settings(stack_up: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """This session's own bucket, repos, destination, scope, RSE, database and queues."""
    return isolate(stack_up, tmp_path_factory.mktemp("unembargo"))


@pytest.fixture(scope="module")
def module_settings(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Settings:
    """Like ``settings``, but the module's own: for tests that expect exactly their data."""
    return isolate(settings, tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))


@pytest.fixture(scope="session")
def rucio(settings: Settings) -> RucioClient:
    """An authenticated client of the test stack's Rucio, to check what the code under test did."""
    from unembargo.adapters.rucio_client import connect

    return connect(settings)


async def _register_namespace(settings: Settings) -> None:
    """The settings' Temporal namespace, with unembargo's search attributes."""
    client = await Client.connect(settings.temporal_address)
    await temporal.ensure_namespace(client, settings.temporal_namespace)


@pytest.fixture(scope="session")
def locations(settings: Settings) -> list[str]:
    """This session's two locations (destination disk, Rucio); their queues are its own."""
    return add_locations(settings, "test")


@pytest.fixture(scope="session")
async def client(settings: Settings) -> Client:
    """A Temporal client of this session's namespace."""
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


@pytest.fixture(scope="module")
def worker(settings: Settings, locations: list[str]) -> Iterator[WorkerProcess]:
    """A real worker process serving this session's queues, for one test module."""
    proc = WorkerProcess(settings, locations)
    yield proc
    proc.stop()
