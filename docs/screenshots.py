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
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus

from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.client.status import exposure_status
from unembargo.devstack import lsstcam
from unembargo.devstack.s3 import LOCAL_ENV
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.engine.connection import connect
from unembargo.engine.starter import start_exposures
from unembargo.models.exposure import STEPS, Exposure, Policy, Step, StepQueues
from unembargo.models.locations import DataLocation, Operation, task_queue
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.tables import step_queues, upsert_location

OUT = Path(__file__).parent / "img"
# A location that exists only for these scenes; its worker cannot reach Rucio.
BROKEN = "screenshot-rucio"
WORKFLOW_QUEUE = "unembargo-screenshots"
# Workflow ids by scene: stuck, failed, completed.
Scenes = dict[str, list[str]]
NO_RUCIO = "http://127.0.0.1:9"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip


def scene_day() -> int:
    """A day of 2024 for this run's exposures (a new one each run: workflow ids never repeat)."""
    day = date(2023, 12, 31) + timedelta(days=random.Random().randrange(1, 366))
    return int(day.strftime("%Y%m%d"))


def scene_worker(state: Path) -> subprocess.Popen[bytes]:
    """The scenes' workflows, and the BROKEN location (in a database of its own), pointed at no Rucio."""
    db = f"sqlite:///{state / 'screenshots.db'}"
    with Session(db_connect(db)) as session:
        upsert_location(session, DataLocation(name=BROKEN, site="screenshots", type="catalogue",
                                              storage="service", endpoint=NO_RUCIO))  # fmt: skip
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


async def start(client: Client, seeded: SeededExposure, queues: StepQueues) -> str:
    exposure = Exposure("LSSTCam", seeded.day_obs, seeded.obs_id, seeded.exposure_id)
    [out] = await start_exposures(client, WORKFLOW_QUEUE, [exposure], queues, Policy())
    return out.workflow_id


async def status_of(client: Client, wid: str) -> WorkflowExecutionStatus | None:
    return (await client.get_workflow_handle(wid).describe()).status


def blocking_zip(settings: Settings, day: int) -> Path:
    """Where a file of other content keeps the fourth exposure from being zipped."""
    return settings.dest_root / "LSSTCam" / str(day) / f"{lsstcam.obs_id(day, 4)}.zip"


async def start_scenes(client: Client, settings: Settings, day: int) -> Scenes:
    """Seed the four exposures, block the fourth's zip, start their workflows."""
    seeded = [seed_exposure(settings, day, seq) for seq in (1, 2, 3, 4)]
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    nowhere = task_queue("screenshots", BROKEN, Operation.REGISTRATION)
    broken = replace(queues, register=nowhere, tag=nowhere)
    blocking = blocking_zip(settings, day)
    blocking.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(blocking, "w") as zf:
        zf.writestr("notes.txt", "an operator's file under the exposure's zip name")
    return {
        "stuck": [await start(client, s, broken) for s in seeded[:2]],
        "completed": [await start(client, seeded[2], queues)],
        "failed": [await start(client, seeded[3], queues)],
    }


async def scenes_ready(client: Client, scenes: Scenes) -> None:
    """Wait until each exposure shows what it is there to show."""

    async def ready() -> bool:
        for wid in scenes["stuck"]:
            now = await exposure_status(client, "LSSTCam", wid.removeprefix("unembargo-LSSTCam-"))
            if not (now.pending and now.pending.step == "register" and now.pending.attempt >= 3):
                return False
        done = await status_of(client, scenes["completed"][0])
        failed = await status_of(client, scenes["failed"][0])
        return (done, failed) == (WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.FAILED)

    await until(ready, timeout=300, what="the scenes (two stuck at register, one failed, one completed)")


class Chromium:
    """Headless Chromium driven over its DevTools pipe (fds 3 and 4): no extra package needed."""

    def __init__(self, binary: str) -> None:
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)

        def pipes_as_3_and_4() -> None:
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        argv = [binary, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}"]
        self.proc = subprocess.Popen(argv, preexec_fn=pipes_as_3_and_4, pass_fds=(3, 4, to_child, from_child),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._last_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params: object) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        self._last_id += 1
        message: dict[str, object] = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                self._buffer += os.read(self._in, 1 << 16)
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def page(self, method: str, **params: object) -> dict[str, Any]:
        return self.call(method, self._session, **params)

    def text(self) -> str:
        found = self.page("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
        return str(found["result"].get("value", ""))

    def shoot(self, url: str, path: Path, shows: list[str], size: tuple[int, int] = (1600, 560)) -> None:
        """Load ``url``; once it shows every string of ``shows`` and stops changing, save a PNG."""
        width, height = size
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        last = ""
        while True:
            text = self.text()
            if all(s in text for s in shows) and text == last:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} never showed {shows}")
            last = text
            time.sleep(0.5)
        data = self.page("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"{path}  <-  {url}")

    def close(self) -> None:
        self.call("Browser.close")
        self.proc.wait(timeout=30)
        self._profile.cleanup()


def ui(settings: Settings, path: str) -> str:
    return f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}/{path}"


def list_url(settings: Settings, query: str) -> str:
    return ui(settings, f"workflows?query={quote(query)}")


async def photograph(
    browser: Chromium, client: Client, settings: Settings, day: int, scenes: Scenes, out: Path
) -> None:
    """The UI's answers to the daily questions, and a stuck exposure's page."""
    ids = {name: [wid.removeprefix("unembargo-") for wid in wids] for name, wids in scenes.items()}
    browser.shoot(list_url(settings, f"day_obs = {day}"), out / "day.png", shows=sum(ids.values(), []))
    stuck_query = f'ExecutionStatus = "Running" AND step = "register" AND day_obs = {day}'
    browser.shoot(list_url(settings, stuck_query), out / "stuck-at-register.png", shows=ids["stuck"])
    failed_query = f'ExecutionStatus = "Failed" AND day_obs = {day}'
    browser.shoot(list_url(settings, failed_query), out / "failed.png", shows=ids["failed"])
    stuck = scenes["stuck"][0]
    run_id = (await client.get_workflow_handle(stuck).describe()).run_id
    page = ui(settings, f"workflows/{stuck}/{run_id}")
    register = STEPS[Step.REGISTER].activity
    browser.shoot(f"{page}/pending-activities", out / "stuck-pending.png", shows=[register, "Last Failure"],
                  size=(1600, 1000))  # fmt: skip
    browser.shoot(f"{page}/history", out / "stuck-history.png", shows=[register], size=(1600, 1200))


async def main(out: Path) -> None:
    binary = shutil.which("chromium")
    if binary is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    settings = Settings(otel_exporter="none")
    use_loopback_credentials(settings.s3_endpoint_url)
    client = await connect(settings)
    day = scene_day()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as state:
        worker = scene_worker(Path(state))
        scenes: Scenes = {}
        try:
            scenes = await start_scenes(client, settings, day)
            await scenes_ready(client, scenes)
            browser = Chromium(binary)
            try:
                await photograph(browser, client, settings, day, scenes, out)
            finally:
                browser.close()
        finally:
            await end_scenes(client, settings, day, scenes)
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    print(f"day_obs {day}: {scenes}")


async def end_scenes(client: Client, settings: Settings, day: int, scenes: Scenes) -> None:
    """Terminate the stuck runs (nothing would ever serve their register queue) and unblock the zip."""
    for wid in scenes.get("stuck", []):
        handle = client.get_workflow_handle(wid)
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate(reason="screenshot scene over")
    blocking_zip(settings, day).unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="Folder for the PNG files.")
    asyncio.run(main(parser.parse_args().out))
