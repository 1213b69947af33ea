"""The dataflow page (``unembargo web``) on the real stack, with exposures in every state.

Real workers run four exposures of a namespace of this module's own: one completes, one fails at
zip (an operator's zip is in the way), one is stuck at register (its worker reaches no Rucio:
each attempt fails and is retried), one waits for its raws. Each page is then rendered from the
real Temporal visibility, histories and database and checked for what a person sees: the counts
per step and state, the failed unit's error type and message and its stack trace, the links to
the Temporal UI, the queues' pollers. Actions refuse without the token and, with it, restart
the failed exposure and reset the stuck one, each logged. No page or JSON holds a secret or a
file's content.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient
from temporalio.client import Client

from support import (
    SMALL,
    WorkerProcess,
    add_locations,
    fresh_day,
    plant_foreign_zip,
    poll_until,
    seed_small,
    start_one,
)
from unembargo.client.status import exposure_status
from unembargo.devstack.procs import free_ports
from unembargo.devstack.seed import seed_exposure
from unembargo.models.exposure import Policy
from unembargo.models.names import SA_STEP, STEP_WAITING
from unembargo.models.settings import Settings
from unembargo.web.app import create_app, serve
from unembargo.web.config import WebConfig

TOKEN = f"web-token-{uuid.uuid4().hex}"
S3_SECRET = f"s3-secret-{uuid.uuid4().hex}"
# What plant_foreign_zip writes into the zip that is in the way: a file's content.
FILE_CONTENT = "operator's own file"
FAST = Policy(heartbeat_s=30, incomplete_wait_s=600, incomplete_poll_s=2)
# The waiting exposure checks again only after the test.
WAITING_LONG = Policy(heartbeat_s=30, incomplete_wait_s=3600, incomplete_poll_s=600)
NO_RUCIO = {"UNEMBARGO_RUCIO_HOST": "http://127.0.0.1:9"}
# Debian's chromium and chromium-driver, which `make test-stack` installs where they are missing.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass(frozen=True)
class Scenes:
    settings: Settings
    locations: list[str]
    completed: str
    failed: str
    stuck: str
    waiting: str
    zip_in_the_way: Any


@pytest.fixture(scope="module")
async def scenes(module_settings: Settings) -> Any:
    """Four exposures: completed, failed at zip, stuck at register, waiting for raws."""
    settings = module_settings
    locations = add_locations(settings, "web")
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    env = {"AWS_SECRET_ACCESS_KEY": S3_SECRET}
    # Every workflow started here, terminated at the end if it still runs (after a reset, say).
    started: list[str] = []
    both = WorkerProcess(settings, locations, env=env)
    try:
        done = seed_small(settings, fresh_day(), 1)
        bad = seed_small(settings, fresh_day(), 2)
        in_the_way = settings.dest_root / "LSSTCam" / str(bad.day_obs) / f"{bad.obs_id}.zip"
        plant_foreign_zip(in_the_way)
        completed = await start_one(client, settings, done, FAST)
        failed = await start_one(client, settings, bad, FAST)
        started += [completed.id, failed.id]
        await completed.result()
        await poll_until(lambda: _closed(client, failed.id), timeout=120, what="the zip to fail the run")
    finally:
        both.stop()
    dest = WorkerProcess(settings, locations[:1], env=env)
    broken = WorkerProcess(settings, locations[1:], env={**env, **NO_RUCIO})
    try:
        slow = seed_small(settings, fresh_day(), 3)
        stuck = await start_one(client, settings, slow, FAST)
        started.append(stuck.id)
        partial = seed_exposure(
            settings, fresh_day(), 4, detectors=SMALL[:2], expected=SMALL, file_size=8 * 1024
        )
        waiting = await start_one(client, settings, partial, WAITING_LONG)
        started.append(waiting.id)

        async def ready() -> bool:
            now = await exposure_status(client, "LSSTCam", slow.obs_id)
            desc = await waiting.describe()
            return now.stuck and desc.typed_search_attributes.get(SA_STEP) == STEP_WAITING

        await poll_until(ready, timeout=180, what="register to be retried and the partial one to wait")
        yield Scenes(settings, locations, completed.id, failed.id, stuck.id, waiting.id, in_the_way)
    finally:
        for wid in started:
            handle = client.get_workflow_handle(wid)
            if (await handle.describe()).close_time is None:
                await handle.terminate("test over")
        dest.stop()
        broken.stop()


async def _closed(client: Client, wid: str) -> bool:
    return (await client.get_workflow_handle(wid).describe()).close_time is not None


@pytest.fixture(scope="module")
def http(scenes: Scenes) -> Iterator[TestClient]:
    config = WebConfig(scenes.settings, actions_enabled=True, token=SecretStr(TOKEN))
    with TestClient(create_app(config)) as client:
        yield client


@pytest.fixture(scope="module")
def rendered() -> list[tuple[str, str]]:
    """Every page and JSON document the tests fetched, for the secret scan at the end."""
    return []


def get(http: TestClient, rendered: list[tuple[str, str]], path: str, **params: str) -> str:
    response = http.get(path, params=params)
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    rendered.append((path, response.text))
    return response.text


class Counts(HTMLParser):
    """The overview's count cells: (flow, step, state) -> number."""

    def __init__(self) -> None:
        super().__init__()
        self.flow = self.step = self.state = ""
        self.found: dict[tuple[str, str, str], int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        got = dict(attrs)
        if tag == "section" and got.get("class") == "flow":
            self.flow = got.get("data-flow") or ""
        elif tag == "tr" and got.get("data-step"):
            self.step = got["data-step"] or ""
        elif tag == "td" and got.get("class") == "count":
            self.state = got.get("data-state") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.state = ""

    def handle_data(self, data: str) -> None:
        if self.state and data.strip() and (self.flow, self.step, self.state) not in self.found:
            self.found[(self.flow, self.step, self.state)] = int(data.split()[0])


def counts_of(page: str) -> dict[tuple[str, str, str], int]:
    parser = Counts()
    parser.feed(page)
    return parser.found


def row_of(page: str, wid: str) -> str:
    found = re.search(rf'<tr class="unit" data-workflow-id="{re.escape(wid)}".*?</tr>', page, re.S)
    assert found, f"no row of {wid}"
    return found.group(0)


def ui_href(settings: Settings, wid: str, run_id: str) -> str:
    """The Temporal UI's page of one run."""
    namespace = f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
    return f"{namespace}/workflows/{wid}/{run_id}/history"


def ui_link(settings: Settings, wid: str, run_id: str) -> str:
    return f'<a class="temporal-link" href="{ui_href(settings, wid, run_id)}">'


def test_overview_counts_every_state_per_step(
    scenes: Scenes, http: TestClient, rendered: list[tuple[str, str]]
) -> None:
    page = get(http, rendered, "/")
    shown = counts_of(page)
    assert shown[("unembargo", "done", "done_today")] == 1
    assert shown[("unembargo", "zip", "failed")] == 1
    assert shown[("unembargo", "register", "running")] == 1
    assert shown[("unembargo", "waiting", "waiting")] == 1
    assert sum(n for (flow, _, _), n in shown.items() if flow == "unembargo") == 4
    assert "(for raws)" in page and "<svg" in page
    as_json = http.get("/api/overview").json()
    rendered.append(("/api/overview", http.get("/api/overview").text))
    [unembargo] = [f for f in as_json["flows"] if f["flow"] == "unembargo"]
    assert unembargo["totals"] == {"running": 1, "waiting": 1, "failed": 1, "done_today": 1}
    assert sum(b["completed"] for b in unembargo["throughput"]) == 1
    metrics = get(http, rendered, "/metrics")
    assert 'unembargo_units{flow="unembargo",step="zip",state="failed"} 1' in metrics
    assert 'unembargo_units{flow="unembargo",step="register",state="running"} 1' in metrics


def test_flow_lists_units_by_state_with_their_errors_and_temporal_links(
    scenes: Scenes, http: TestClient, rendered: list[tuple[str, str]]
) -> None:
    page = get(http, rendered, "/flows/unembargo", state="all")
    for wid in (scenes.completed, scenes.failed, scenes.stuck, scenes.waiting):
        assert f'<tr class="unit" data-workflow-id="{wid}"' in page
    failed = http.get("/api/flows/unembargo", params={"state": "failed"}).json()
    [unit] = failed["units"]
    assert (unit["workflow_id"], unit["step"], unit["error_type"]) == (
        scenes.failed,
        "zip",
        "DestinationConflict",
    )
    row = row_of(get(http, rendered, "/flows/unembargo", state="failed"), scenes.failed)
    assert '<span class="error-type">DestinationConflict</span>' in row
    assert unit["error_message"] and "error-message" in row
    assert ui_link(scenes.settings, scenes.failed, unit["run_id"]) in row
    waiting = http.get("/api/flows/unembargo", params={"state": "waiting"}).json()["units"]
    assert [(u["workflow_id"], u["waiting_for"]) for u in waiting] == [(scenes.waiting, "for raws")]
    day = http.get("/api/flows/unembargo", params={"state": "running", "step": "register"}).json()
    assert [u["workflow_id"] for u in day["units"]] == [scenes.stuck]
    typed = http.get("/api/flows/unembargo", params={"error": "DestinationConflict"}).json()
    assert [u["workflow_id"] for u in typed["units"]] == [scenes.failed]


def test_unit_pages_show_timeline_failure_and_stack_trace(
    scenes: Scenes, http: TestClient, rendered: list[tuple[str, str]]
) -> None:
    page = get(http, rendered, f"/flows/unembargo/units/{scenes.failed}")
    assert '<span class="error-type">DestinationConflict</span>' in page
    trace = re.search(r'<pre class="stack-trace">(.*?)</pre>', page, re.S)
    assert trace and "File &#34;" in trace.group(1) and ", line " in trace.group(1)
    done = http.get(f"/api/flows/unembargo/units/{scenes.completed}").json()
    assert [s["step"] for s in done["steps"] if s["done"]] == ["zip", "export", "ingest", "register", "tag"]
    assert done["steps"][0]["summary"].startswith("LSSTCam/")
    get(http, rendered, f"/flows/unembargo/units/{scenes.completed}")
    stuck = get(http, rendered, f"/flows/unembargo/units/{scenes.stuck}")
    assert "step <b>register</b>" in stuck and 'class="attempt"' in stuck
    shown = http.get(f"/api/flows/unembargo/units/{scenes.stuck}").json()
    assert shown["pending"]["attempt"] >= 2 and shown["pending"]["failure"]["message"]
    # The run's own account (its state query), answered by the worker.
    assert shown["state_fields"]["current"] == "register" and 'class="unit-state"' in stuck
    wait = http.get(f"/api/flows/unembargo/units/{scenes.waiting}").json()
    assert wait["state"] == "waiting" and "2 of 3" in (wait["waiting_for"] or "")
    get(http, rendered, f"/flows/unembargo/units/{scenes.waiting}")


def test_locations_show_each_queue_and_its_pollers(
    scenes: Scenes, http: TestClient, rendered: list[tuple[str, str]]
) -> None:
    page = get(http, rendered, "/locations")
    shown = http.get("/api/locations").json()
    rendered.append(("/api/locations", http.get("/api/locations").text))
    assert {loc["name"] for loc in shown["locations"]} >= set(scenes.locations)
    served = {q["location"]: q for q in shown["queues"] if q["location"] in scenes.locations}
    assert served and all(q["healthy"] and q["pollers"] for q in served.values())
    assert all(f'data-location="{name}"' in page for name in scenes.locations)
    assert 'data-healthy="yes"' in page and 'class="poller"' in page


async def test_browser_follows_the_failed_count_to_the_error_and_its_temporal_link(
    scenes: Scenes, rendered: list[tuple[str, str]]
) -> None:
    """Headless Chromium: overview -> the failed count -> the failed list -> the unit's page.

    With UNEMBARGO_WEB_SCREENSHOTS=<dir> it saves the pages docs/web.md shows.
    """
    settings = scenes.settings
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    run_id = (await client.get_workflow_handle(scenes.failed).describe()).run_id
    port = free_ports()[0]
    server = asyncio.create_task(serve(WebConfig(settings), "127.0.0.1", port))
    try:
        await poll_until(lambda: asyncio.to_thread(_answers, port), timeout=30, what="the page to answer")
        seen = await asyncio.to_thread(browse, f"http://127.0.0.1:{port}", scenes.failed)
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
    rendered.extend(seen.pages)
    assert seen.failed_count == "1"
    assert seen.listed == [scenes.failed]
    assert seen.error_type == "DestinationConflict"
    assert seen.error_message and seen.error_message == seen.api_error_message
    assert seen.temporal_href == ui_href(settings, scenes.failed, run_id)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Seen:
    """What a person sees on the way from the overview to the failed exposure's page."""

    failed_count: str = ""
    listed: list[str] = field(default_factory=list)
    error_type: str = ""
    error_message: str = ""
    api_error_message: str = ""
    temporal_href: str = ""
    pages: list[tuple[str, str]] = field(default_factory=list)


def browse(base: str, failed: str) -> Seen:
    """Click through the page in headless Chromium (blocking; the test runs it in a thread)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    shots = os.environ.get("UNEMBARGO_WEB_SCREENSHOTS")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    seen = Seen()

    def visited(name: str) -> None:
        seen.pages.append((driver.current_url, driver.page_source))
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(Path(shots) / f"web-{name}.png"))

    try:
        wait = WebDriverWait(driver, 20)
        driver.get(base + "/")
        cell = 'section.flow[data-flow="unembargo"] tr[data-step="zip"] td.count[data-state="failed"] a'
        link = wait.until(shown.element_to_be_clickable((By.CSS_SELECTOR, cell)))
        seen.failed_count = link.text.strip()
        visited("overview")
        link.click()
        wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "tr.unit[data-workflow-id]")))
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.unit[data-workflow-id]")
        seen.listed = [row.get_attribute("data-workflow-id") or "" for row in rows]
        visited("flow-failed")
        row = driver.find_element(By.CSS_SELECTOR, f'tr.unit[data-workflow-id="{failed}"]')
        row.find_element(By.CSS_SELECTOR, "a.unit-link").click()
        wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "pre.stack-trace")))
        seen.error_type = driver.find_element(By.CSS_SELECTOR, ".error-type").text
        seen.error_message = driver.find_element(By.CSS_SELECTOR, ".error-message").text
        href = driver.find_element(By.CSS_SELECTOR, "a.temporal-link").get_attribute("href")
        seen.temporal_href = href or ""
        visited("unit-failed")
        with urllib.request.urlopen(f"{base}/api/flows/unembargo/units/{failed}", timeout=10) as got:
            seen.api_error_message = json.load(got)["failure"]["message"]
        driver.get(base + "/locations")
        wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, "[data-location]")))
        visited("locations")
    finally:
        driver.quit()
    return seen


def test_actions_refuse_without_the_token_and_are_done_and_logged_with_it(
    scenes: Scenes, http: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    retry = f"/api/flows/unembargo/units/{scenes.failed}/retry"
    before = http.get(f"/api/flows/unembargo/units/{scenes.failed}").json()["run_id"]
    assert http.post(retry).status_code == 401
    assert http.post(retry, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    assert http.get(f"/api/flows/unembargo/units/{scenes.failed}").json()["run_id"] == before

    scenes.zip_in_the_way.unlink()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with caplog.at_level(logging.INFO, logger="unembargo.web.actions"):
        restarted = http.post(retry, headers=bearer).json()
        reset = http.post(f"/api/flows/unembargo/units/{scenes.stuck}/retry", headers=bearer).json()
        to_tag = http.post(
            f"/api/flows/unembargo/units/{scenes.completed}/reset", headers=bearer, data={"step": "tag"}
        ).json()
    assert restarted["outcome"] == "restarted" and restarted["run_id"] != before
    assert reset["outcome"] == "reset"
    # A reset to a step: a new run from just before the step's activity was first scheduled.
    assert to_tag["outcome"] == "reset" and to_tag["step"] == "tag"
    again = http.get(f"/api/flows/unembargo/units/{scenes.completed}").json()
    assert again["run_id"] == to_tag["run_id"] and again["status"] == "running"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"retry of unembargo/{scenes.failed}: restarted" in logged
    assert f"retry of unembargo/{scenes.stuck}: reset" in logged and TOKEN not in logged
    # Kept in the database too, and shown on the unit's page.
    actions = http.get("/api/actions", headers=bearer).json()["actions"]
    page = http.get(f"/flows/unembargo/units/{scenes.failed}").text
    assert '<tr class="action-done">' in page and "restarted" in page
    assert [(a["workflow_id"], a["outcome"]) for a in actions[:3]] == [
        (scenes.completed, "reset"),
        (scenes.stuck, "reset"),
        (scenes.failed, "restarted"),
    ]


def test_no_page_or_json_holds_a_secret_or_file_content(
    scenes: Scenes, http: TestClient, rendered: list[tuple[str, str]]
) -> None:
    for path in ("/api/flows/unembargo", f"/api/flows/unembargo/units/{scenes.failed}", "/login"):
        get(http, rendered, path)
    searched = {
        "the web token": TOKEN,
        "the Rucio password": scenes.settings.rucio_secret(),
        "the workers' S3 secret key": S3_SECRET,
        "a file's content": FILE_CONTENT,
    }
    assert len(rendered) >= 12
    for path, text in rendered:
        leaked = [w for w, v in searched.items() if v and (v in text or html.escape(v) in text)]
        assert not leaked, f"{path} holds {', '.join(leaked)}"
