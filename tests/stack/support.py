"""Helpers shared by the tests: where the test stack lives, settings for child processes."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session, select
from temporalio.client import Client, WorkflowHandle

from unembargo.client import carousel as carousel_api
from unembargo.devstack.s3 import LOCAL_ENV
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.engine.starter import start_exposures
from unembargo.models.carousel import CarouselSettings
from unembargo.models.exposure import Exposure, Policy, StepQueues
from unembargo.models.locations import DataLocation, LocationType, Operation, StorageType
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect, connect, step_queues, upsert_location

REPO = Path(__file__).resolve().parents[2]
STACK_DIR = REPO / ".dev" / "test-stack"
# Ports of this checkout's test stack: a block derived from its path, so two checkouts
# on one machine (a developer's and CI's clean clone) never share services. Below 32768,
# where Linux's ephemeral range starts, so no outgoing connection holds a port a service
# restarts on.
PORT_BASE = 20000 + int(hashlib.sha1(str(STACK_DIR).encode()).hexdigest(), 16) % 1270 * 10

# Point boto3 and lsst-resources at the local endpoint before anything builds a client.
for _key, _value in LOCAL_ENV.items():
    os.environ[_key] = _value
os.environ["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{PORT_BASE + 1}"


def stack_settings() -> Settings:
    """The test stack's services: the dev defaults moved to this checkout's ports and state."""
    return Settings(
        state_dir=STACK_DIR,
        temporal_address=f"127.0.0.1:{PORT_BASE + 2}",
        temporal_ui_url=f"http://127.0.0.1:{PORT_BASE + 3}",
        s3_endpoint_url=os.environ["S3_ENDPOINT_URL"],
        rucio_host=f"http://127.0.0.1:{PORT_BASE + 4}",
        rucio_password_file=STACK_DIR / "rucio" / "password",
        dest_root=STACK_DIR / "dest" / "raw",
        database_url=f"sqlite:///{STACK_DIR / 'unembargo.db'}",
    )


def worker_argv(locations: list[str]) -> list[str]:
    """Command line of a worker serving ``locations`` and the workflow queue."""
    argv = [sys.executable, "-m", "unembargo.cli.app", "worker"]
    for name in locations:
        argv += ["--location", name]
    return argv


class WorkerProcess:
    """A real worker process for one test, killable with SIGKILL."""

    def __init__(
        self,
        settings: Settings,
        locations: list[str],
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> None:
        log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1])
        self.log = log
        self.proc = subprocess.Popen(
            argv or worker_argv(locations),
            env={**os.environ, **settings.environment(), **(env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_dead(self, timeout: float) -> int:
        """Wait for the process to end (e.g. after a fault-injection SIGKILL); its return code."""
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def location_names(settings: Settings) -> list[str]:
    """Names of the two locations ``add_locations`` gives isolated settings: destination, Rucio."""
    tag = settings.rucio_rse.removeprefix("TEST_").lower()
    return [f"dest-{tag}", f"rucio-{tag}"]


def location_row(settings: Settings, operation: str, name: str, site: str, **fields: Any) -> DataLocation:
    """A location serving one of the unembargo flow's operations with ``settings``' resources:
    the archive disk (unembargo) or the Rucio catalogue (registration)."""
    if operation == Operation.UNEMBARGO:
        return DataLocation(
            name=name, site=site, type=LocationType.LONG_TERM_ARCHIVE, storage=StorageType.DISK,
            path=str(settings.dest_root), operations=Operation.UNEMBARGO.value, **fields,
        )  # fmt: skip
    assert operation == Operation.REGISTRATION, operation
    return DataLocation(
        name=name, site=site, type=LocationType.CATALOGUE, storage=StorageType.SERVICE,
        endpoint=settings.rucio_host, **fields,
    )  # fmt: skip


def unembargo_locations(settings: Settings, site: str, **fields: Any) -> list[DataLocation]:
    """The unembargo flow's two locations for ``settings``: its archive disk and its Rucio."""
    dest, rucio = location_names(settings)
    return [
        location_row(settings, Operation.UNEMBARGO, dest, site, **fields),
        location_row(settings, Operation.REGISTRATION, rucio, site, **fields),
    ]


def add_locations(settings: Settings, site: str, **fields: Any) -> list[str]:
    """Two locations of the settings' own (archive disk, Rucio), so their queues are too."""
    rows = unembargo_locations(settings, site, **fields)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for row in rows:
            upsert_location(session, row)
    return [row.name for row in rows]


_days = random.Random()


def carousel_location(
    settings: Settings, name: str, site: str, short_name: str, path: Path
) -> dict[str, str]:
    """A processing location on disk at ``path`` for the carousel's staging; its steps' queues."""
    with Session(connect(settings.database_url.get_secret_value())) as session:
        upsert_location(
            session,
            DataLocation(name=name, site=site, type=LocationType.PROCESSING, storage=StorageType.DISK,
                         path=str(path)),
            short_name=short_name,
        )  # fmt: skip
        return carousel_api.route(session, CarouselSettings(location=name))


def fresh_day() -> int:
    """A past day_obs (2000-2019) that no other test of this session is likely to use."""
    return 20000101 + _days.randrange(0, 20) * 10000 + _days.randrange(0, 12) * 100 + _days.randrange(0, 28)


# A complete exposure of three detectors (science, guider, wavefront; expectedSensors lists
# just those): it seeds in under a second, where the full focal plane of 205 takes about
# six. Tests of the workflow on the stack (crashes, schedules, status, start) use it; the
# full focal plane goes through each step in test_zip, test_butler_steps and test_seed.
SMALL = (0, 189, 196)


def seed_small(settings: Settings, day_obs: int, seq_num: int, **options: Any) -> SeededExposure:
    """``seed_exposure`` of a small complete exposure (``SMALL``), small files."""
    options.setdefault("file_size", 8 * 1024)
    return seed_exposure(settings, day_obs, seq_num, detectors=SMALL, expected=SMALL, **options)


def effects(settings: Settings, obs_ids: set[str]) -> Counter[tuple[str, str, str]]:
    """Side-effect ledger rows per (obs_id, step, action)."""
    with Session(connect(settings.database_url.get_secret_value())) as session:
        rows = session.exec(select(Effect).where(Effect.obs_id.in_(obs_ids))).all()  # type: ignore[attr-defined]
    return Counter((r.obs_id, r.step, r.action) for r in rows)


async def poll_until(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, interval: float = 0.25
) -> None:
    """Await until ``check()`` is true; fail after ``timeout`` seconds saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def start_one(
    client: Client,
    settings: Settings,
    seeded: SeededExposure,
    policy: Policy,
    queues: StepQueues | None = None,
) -> WorkflowHandle[object, object]:
    """Start the workflow of one seeded exposure (it must be new); its handle."""
    if queues is None:
        with Session(connect(settings.database_url.get_secret_value())) as session:
            queues = step_queues(session)
    exposure = Exposure("LSSTCam", seeded.day_obs, seeded.obs_id, seeded.exposure_id)
    [out] = await start_exposures(client, settings.workflow_task_queue, [exposure], queues, policy)
    assert out.outcome == "started", out
    return client.get_workflow_handle(out.workflow_id)


def plant_foreign_zip(path: Path) -> None:
    """An operator's own file under an exposure's final zip name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("something-else.txt", "operator's own file")
