"""Screenshots of the real Temporal web UI for docs/operations.md (docs/img/*.png).

Run against the local stack (``unembargo dev up``; Debian's ``chromium`` installed):

    .venv/bin/python docs/screenshots.py

It seeds four exposures on a day of their own and makes the scenes an operator
meets: two stuck at register (their Rucio is unreachable), one failed at zip (a
zip of other content is in the way), one completed. A worker started here runs
their workflows (today's code, on a workflow queue of its own) and the register
step of the stuck ones (a location whose Rucio address has nothing listening);
the stack's own worker runs the other steps. Then headless Chromium photographs
the UI's filtered lists and a stuck exposure's page. At the end the stuck runs
are terminated, the worker stopped and the blocking zip removed; the workflows
stay in the UI, on that day only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus

from unembargo.client.connection import connect
from unembargo.client.starter import start_exposures
from unembargo.client.status import exposure_status
from unembargo.devstack import stack
from unembargo.devstack.s3 import LOCAL_ENV
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models import names
from unembargo.models.exposure import Exposure, Policy, StepQueues
from unembargo.models.settings import Settings
from unembargo.models.tables import Location, step_queues, upsert_location
from unembargo.models.tables import connect as db_connect

OUT = Path(__file__).parent / "img"
# A location that exists only for these scenes; its worker cannot reach Rucio.
BROKEN = "screenshot-rucio"
WORKFLOW_QUEUE = "unembargo-screenshots"
NO_RUCIO = "http://127.0.0.1:9"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
    # The UI is a single-page app: let its scripts fetch and render before the shot.
    "--virtual-time-budget=15000",
]  # fmt: skip


def scene_day() -> int:
    """A day of 2024 for this run's exposures (a new one each run: workflow ids never repeat)."""
    day = random.Random().randrange(1, 366)
    from datetime import date, timedelta

    return int((date(2023, 12, 31) + timedelta(days=day)).strftime("%Y%m%d"))


def scene_worker(state: Path) -> subprocess.Popen[bytes]:
    """The scenes' workflows, and the BROKEN location (in a database of its own), pointed at no Rucio."""
    db = f"sqlite:///{state / 'screenshots.db'}"
    with Session(db_connect(db)) as session:
        upsert_location(session, Location(name=BROKEN, site="screenshots", kind="rucio", storage=NO_RUCIO))
    env = {**os.environ, **LOCAL_ENV, "UNEMBARGO_DATABASE_URL": db, "UNEMBARGO_RUCIO_HOST": NO_RUCIO,
           "UNEMBARGO_WORKFLOW_TASK_QUEUE": WORKFLOW_QUEUE, "UNEMBARGO_OTEL_EXPORTER": "none"}  # fmt: skip
    argv = [sys.executable, "-m", "unembargo.cli.app", "worker", "--location", BROKEN]
    log = (state / "scene-worker.log").open("wb")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` every half second; fail after ``timeout`` seconds saying what never happened."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.5)


async def start(client: Client, settings: Settings, seeded: SeededExposure, queues: StepQueues) -> str:
    exposure = Exposure("LSSTCam", seeded.day_obs, seeded.obs_id, seeded.exposure_id)
    [out] = await start_exposures(client, WORKFLOW_QUEUE, [exposure], queues, Policy())
    return out.workflow_id


async def status_of(client: Client, wid: str) -> WorkflowExecutionStatus | None:
    return (await client.get_workflow_handle(wid).describe()).status


async def make_scenes(client: Client, settings: Settings, day: int) -> dict[str, list[str]]:
    """Start the four exposures and wait until each shows what it is there to show."""
    seeded = [seed_exposure(settings, day, seq) for seq in (1, 2, 3, 4)]
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    broken = replace(queues, register=names.location_queue(BROKEN), tag=names.location_queue(BROKEN))
    blocking = settings.dest_root / "LSSTCam" / str(day) / f"{seeded[3].obs_id}.zip"
    blocking.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(blocking, "w") as zf:
        zf.writestr("notes.txt", "an operator's file under the exposure's zip name")
    scenes = {
        "stuck": [await start(client, settings, s, broken) for s in seeded[:2]],
        "completed": [await start(client, settings, seeded[2], queues)],
        "failed": [await start(client, settings, seeded[3], queues)],
    }

    async def ready() -> bool:
        for wid in scenes["stuck"]:
            now = await exposure_status(client, "LSSTCam", wid.removeprefix("unembargo-LSSTCam-"))
            if not (now.pending and now.pending.step == "register" and now.pending.attempt >= 3):
                return False
        done = await status_of(client, scenes["completed"][0])
        failed = await status_of(client, scenes["failed"][0])
        return (done, failed) == (WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.FAILED)

    await until(ready, timeout=300, what="the scenes (two stuck at register, one failed, one completed)")
    blocking.unlink()
    return scenes


def shoot(chromium: str, url: str, path: Path, size: str = "1600,560") -> None:
    """One screenshot of ``url`` in a fresh browser profile."""
    # Chromium's helpers may still be writing to the profile as it exits.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        argv = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                f"--screenshot={path}", url]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
    print(f"{path}  <-  {url}")


def ui(settings: Settings, path: str) -> str:
    return f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}/{path}"


def list_url(settings: Settings, query: str) -> str:
    return ui(settings, f"workflows?query={quote(query)}")


async def main(out: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    settings = Settings(otel_exporter="none")
    stack.use_local_credentials(settings)
    client = await connect(settings)
    day = scene_day()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as state:
        worker = scene_worker(Path(state))
        try:
            scenes = await make_scenes(client, settings, day)
            shots = {
                "day.png": list_url(settings, f"day_obs = {day}"),
                "stuck-at-register.png": list_url(
                    settings, f'ExecutionStatus = "Running" AND step = "register" AND day_obs = {day}'
                ),
                "failed.png": list_url(settings, f'ExecutionStatus = "Failed" AND day_obs = {day}'),
            }
            for name, url in shots.items():
                shoot(chromium, url, out / name)
            stuck = scenes["stuck"][0]
            run_id = (await client.get_workflow_handle(stuck).describe()).run_id
            page = ui(settings, f"workflows/{stuck}/{run_id}/history")
            shoot(chromium, page, out / "stuck-exposure.png", size="1600,1300")
            for wid in scenes["stuck"]:
                await client.get_workflow_handle(wid).terminate(reason="screenshot scene over")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    print(
        f"day_obs {day}: stuck {scenes['stuck']}, failed {scenes['failed']}, completed {scenes['completed']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="Folder for the PNG files.")
    asyncio.run(main(parser.parse_args().out))
