"""Benchmark: the dataflow page's pages and JSON with 10,000 units in a namespace, against
100 units in another namespace of the same Temporal, every page asked cold.

    .venv/bin/python benchmarks/web.py                 # 10,000 units against 100
    .venv/bin/python benchmarks/web.py --units 2000 --requests 5

On the benchmark's own Temporal (benchmarks/pipeline.py's stack, ``.dev/bench``, :7333; only
Temporal is started if it is not running). It seeds ``--units`` exposure workflows into the
namespace ``bench-web-<units>`` and ``--baseline`` into ``bench-web-<baseline>``: the real
workflow type, ids and search attributes (instrument, day_obs, obs_id, step) that
engine/starter.py gives them, spread over several days and steps, on a task queue no worker
polls (so they stay where they were put), and about a tenth of them terminated so closed
units exist. Seeding is skipped when the namespace already holds the workflows.

Then the real application (web/app.py create_app, in process over httpx's ASGI transport,
``count_ttl=0`` so no count is reused) is asked each page ``--requests`` times: the overview,
the flow's first page, a filtered page (running at zip), the next page by its token, a
unit's page, their JSON, and ``/metrics``. Prints median and p95 seconds per page for both
namespaces and whether each is under the target; writes ``benchmarks/results/web-<UTC
time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr
from temporalio.client import Client

from report import REPO, write_results
from unembargo.models import names
from unembargo.models.exposure import DESTINATION, RUCIO, Exposure, ExposureInput, Policy, Step
from unembargo.models.settings import Settings

BENCH_STATE = REPO / ".dev" / "bench"
TEMPORAL_PORT = 7333
TARGET_SECONDS = 1.0
INSTRUMENT = "LSSTCam"
FIRST_DAY = 20250601
DAYS = 10
# Steps a seeded unit stands at (the flow's own values), round robin.
STEPS = (names.STEP_QUEUED, *(str(s) for s in Step), names.STEP_WAITING)
# One unit in TERMINATE_EVERY is terminated, so failed (closed) units exist.
TERMINATE_EVERY = 10
IN_FLIGHT = 50
# A queue no worker polls: the units stay at the step they were given.
TASK_QUEUE = "bench-web-unpolled"


def settings_for(namespace: str) -> Settings:
    """The benchmark's Temporal and a database of its own, for one namespace."""
    return Settings(
        state_dir=BENCH_STATE,
        temporal_address=f"127.0.0.1:{TEMPORAL_PORT}",
        temporal_ui_url="http://127.0.0.1:8333",
        temporal_namespace=namespace,
        database_url=SecretStr(f"sqlite:///{BENCH_STATE / 'web' / 'unembargo.db'}"),
        otel_exporter="none",
    )


def bring_up(settings: Settings) -> None:
    """Start the benchmark's Temporal unless it is running (the rest of its stack is not needed)."""
    from unembargo.devstack import stack

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    for service in stack.SERVICES:
        if service.name == "temporal":
            print(f"  temporal: {service.ensure(settings)}", flush=True)


def exposure(i: int) -> Exposure:
    """The ``i``-th seeded exposure: days round robin, sequence numbers within a day."""
    day = FIRST_DAY + i % DAYS
    seq = i // DAYS + 1
    return Exposure(INSTRUMENT, day, f"MC_O_{day}_{seq:06d}", day * 100000 + seq)


async def bounded(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``jobs`` with at most IN_FLIGHT at once."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def seed(settings: Settings, units: int) -> dict[str, Any]:
    """``units`` exposure workflows in the settings' namespace, unless it holds them already."""
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from unembargo.devstack import temporal

    base = await Client.connect(settings.temporal_address)
    await temporal.ensure_namespace(base, settings.temporal_namespace)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    query = f'WorkflowType = "{names.EXPOSURE_WORKFLOW}"'
    held = (await client.count_workflows(query)).count
    if held >= units:
        return {"seeded": 0, "held": held, "seconds": 0.0}
    queues = {
        DESTINATION: names.location_queue("bench-web-dest"),
        RUCIO: names.location_queue("bench-web-rucio"),
    }

    def start(i: int) -> Callable[[], Awaitable[None]]:
        exp = exposure(i)

        async def job() -> None:
            wid = names.workflow_id(exp.instrument, exp.obs_id)
            try:
                handle = await client.start_workflow(
                    names.EXPOSURE_WORKFLOW,
                    ExposureInput(exp, queues, Policy()),
                    id=wid,
                    task_queue=TASK_QUEUE,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    search_attributes=names.exposure_search_attributes(
                        exp.instrument, exp.day_obs, exp.obs_id, STEPS[i % len(STEPS)]
                    ),
                )
            except WorkflowAlreadyStartedError:
                return
            if i % TERMINATE_EVERY == TERMINATE_EVERY - 1:
                await handle.terminate(reason="benchmark: a closed unit")

        return job

    began = time.perf_counter()
    await bounded([start(i) for i in range(units)])
    seconds = time.perf_counter() - began
    held = await wait_visible(client, query, units)
    return {"seeded": units, "held": held, "seconds": round(seconds, 1)}


async def wait_visible(client: Client, query: str, units: int, deadline_s: float = 120.0) -> int:
    """Visibility is written after the start: poll until every unit is listed (or the deadline)."""
    deadline = time.monotonic() + deadline_s
    while True:
        held = (await client.count_workflows(query)).count
        if held >= units or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(settings: Settings, requests: int) -> dict[str, dict[str, Any]]:
    """Median and p95 seconds of each page, every request cold (no count reused)."""
    from unembargo.web.app import create_app
    from unembargo.web.config import WebConfig

    app = create_app(WebConfig(settings=settings, count_ttl=0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as http:
        first = (await http.get("/api/flows/unembargo")).json()
        token = first["next_page_token"]
        unit_id = first["units"][0]["workflow_id"]
        pages = {
            "overview /": "/",
            "flow page 1": "/flows/unembargo",
            "filtered (running, zip)": "/flows/unembargo?state=running&step=zip",
            "unit page": f"/flows/unembargo/units/{unit_id}",
            "/api/overview": "/api/overview",
            "/api/flows/unembargo": "/api/flows/unembargo",
            "/api/flows (running, zip)": "/api/flows/unembargo?state=running&step=zip",
            "/metrics": "/metrics",
        }
        if token:
            pages["flow page 2 (token)"] = f"/flows/unembargo?{urlencode({'page_token': token})}"
        found: dict[str, dict[str, Any]] = {}
        for label, path in pages.items():
            await check(http, path)
            times = []
            for _ in range(requests):
                began = time.perf_counter()
                await check(http, path)
                times.append(time.perf_counter() - began)
            found[label] = {
                "path": path,
                "median_s": round(statistics.median(times), 4),
                "p95_s": round(percentile(times, 0.95), 4),
                "max_s": round(max(times), 4),
                "times_s": [round(t, 4) for t in times],
            }
    return found


async def check(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    if response.status_code != 200:
        raise SystemExit(f"{path}: HTTP {response.status_code}: {response.text[:300]}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(result: dict[str, Any]) -> str:
    big, small = result["units"], result["baseline"]
    rows = [
        f"| page | {big:,} units median s | p95 s | {small:,} units median s | p95 s "
        f"| under {TARGET_SECONDS:g} s |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, m in result["pages"][str(big)].items():
        b = result["pages"][str(small)].get(label)
        base = f"{b['median_s']:.3f} | {b['p95_s']:.3f}" if b else "- | -"
        verdict = "pass" if m["p95_s"] < TARGET_SECONDS else "FAIL"
        rows.append(f"| {label} | {m['median_s']:.3f} | {m['p95_s']:.3f} | {base} | {verdict} |")
    return "\n".join(rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "units": args.units,
        "baseline": args.baseline,
        "requests": args.requests,
        "target_s": TARGET_SECONDS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_before": load(),
        "seeding": {},
        "pages": {},
    }
    for units in (args.units, args.baseline):
        settings = settings_for(f"bench-web-{units}")
        print(f"seeding {units:,} units in {settings.temporal_namespace}", flush=True)
        result["seeding"][str(units)] = await seed(settings, units)
        print(f"  {result['seeding'][str(units)]}", flush=True)
    for units in (args.units, args.baseline):
        settings = settings_for(f"bench-web-{units}")
        print(f"measuring {settings.temporal_namespace}", flush=True)
        result["pages"][str(units)] = await measure(settings, args.requests)
    result["load_after"] = load()
    result["passed"] = all(m["p95_s"] < TARGET_SECONDS for m in result["pages"][str(args.units)].values())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--units", type=int, default=10_000, help="units in the measured namespace")
    parser.add_argument("--baseline", type=int, default=100, help="units in the baseline namespace")
    parser.add_argument("--requests", type=int, default=10, help="timed requests per page")
    args = parser.parse_args(argv)
    bring_up(settings_for("default"))
    result = asyncio.run(run(args))
    print(table(result))
    print(f"load before {result['load_before']}, after {result['load_after']}")
    path = write_results("web", result)
    print(f"results: {Path(path).relative_to(REPO)}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
