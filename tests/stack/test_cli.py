"""The `unembargo` command as users type it, against the real stack."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from support import WorkerProcess, fresh_day, poll_until
from tcp_proxy import TcpProxy
from unembargo.devstack import procs, temporal
from unembargo.devstack.seed import seed_exposure
from unembargo.models import names
from unembargo.models.settings import Settings, host_port

# Back past every day fresh_day() gives (2000-2019): 30 years.
LOOKBACK = "10950d"


def unembargo(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", *args],
        env={**os.environ, **settings.environment(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_start_json_then_again_starts_nothing(settings: Settings, worker: WorkerProcess) -> None:
    day = fresh_day()
    seeded = {seed_exposure(settings, day, seq).obs_id for seq in (1, 2)}
    args = ("start", "--window", "80h", "--lookback", LOOKBACK, "--day", str(day), "--json")

    first = unembargo(settings, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    report = json.loads(first.stdout)
    assert report["ok"] is True
    assert {e["obs_id"] for e in report["exposures"]} == seeded
    assert {e["outcome"] for e in report["exposures"]} == {"started"}
    assert {e["final"]["status"] for e in report["exposures"]} == {"completed"}

    again = json.loads(unembargo(settings, *args).stdout)
    assert {e["outcome"] for e in again["exposures"]} == {"completed"}


def test_dry_run_lists_and_starts_nothing(settings: Settings) -> None:
    day = fresh_day()
    obs_id = seed_exposure(settings, day, 1).obs_id
    out = unembargo(
        settings, "start", "--window", "0", "--lookback", LOOKBACK, "--day", str(day), "--dry-run"
    )
    assert out.returncode == 0, out.stderr
    assert obs_id in out.stdout and "would start" in out.stdout
    assert not (settings.dest_root / "LSSTCam" / str(day)).exists()


def test_a_named_day_is_not_cut_by_the_default_lookback(settings: Settings) -> None:
    day = fresh_day()  # 2000-2019: far older than the default lookback of 30 d
    obs_id = seed_exposure(settings, day, 1).obs_id
    out = unembargo(settings, "start", "--window", "0", "--day", str(day), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert obs_id in out.stdout and "would start" in out.stdout, out.stdout


def test_bad_duration_is_a_usage_error(settings: Settings) -> None:
    out = unembargo(settings, "start", "--window", "eighty hours")
    assert out.returncode == 2
    assert "not a duration" in out.stderr


def test_locations_add_and_list(settings: Settings) -> None:
    # A buffer: no step of the unembargo flow is routed to it, so later tests are not either.
    added = unembargo(
        settings, "locations", "add", "summit-disk", "--site", "summit", "--type", "buffer",
        "--storage", "disk", "--path", "/data/raw", "--priority", "5",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    [row] = [
        r
        for r in json.loads(unembargo(settings, "locations", "list", "--json").stdout)
        if r["name"] == "summit-disk"
    ]
    assert row["priority"] == 5 and "summit_summit-disk_transfer" in row["queues"]
    bad = unembargo(
        settings,
        "locations",
        "add",
        "../x",
        "--site",
        "s",
        "--type",
        "buffer",
        "--storage",
        "disk",
        "--path",
        "/x",
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("status", "MC_O_20251231_000001"),
        ("schedule", "list"),
        ("retry", "MC_O_20251231_000001", "--reason", "test"),
        ("reconcile", "--day", "20251231", "--json"),
    ],
)
def test_temporal_down_is_a_named_error_not_a_traceback(settings: Settings, args: tuple[str, ...]) -> None:
    address = f"127.0.0.1:{procs.free_ports()[0]}"
    out = unembargo(settings.model_copy(update={"temporal_address": address}), *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"TemporalUnreachable: cannot reach Temporal at {address}" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_an_embargo_butler_that_cannot_be_opened_is_a_named_error(settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo"
    out = unembargo(settings.model_copy(update={"embargo_butler": str(missing)}), "start", "--window", "80h")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "SourceUnavailable: could not read the embargo butler" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def _run_one_exposure(settings: Settings, worker: WorkerProcess) -> None:
    """Seed one exposure, `start` it, and see the worker complete it."""
    day = fresh_day()
    obs_id = seed_exposure(settings, day, 1).obs_id
    args = ("start", "--window", "80h", "--lookback", LOOKBACK, "--day", str(day), "--json")
    out = unembargo(settings, *args)
    assert out.returncode == 0, out.stdout + out.stderr + worker.output()
    [exposure] = json.loads(out.stdout)["exposures"]
    assert (exposure["obs_id"], exposure["final"]["status"]) == (obs_id, "completed")


def _retries(worker: WorkerProcess, count: int) -> bool:
    return worker.output().count("trying again in") >= count


def test_a_worker_started_before_temporal_waits_for_it_then_runs_exposures(
    settings: Settings, locations: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A reboot or a stack coming up starts workers first: they must not exit."""
    frontend, ui = procs.free_ports(2)
    own = settings.model_copy(
        update={
            "state_dir": tmp_path / "temporal",
            "temporal_address": f"127.0.0.1:{frontend}",
            "temporal_ui_url": f"http://127.0.0.1:{ui}",
        }
    )
    worker = WorkerProcess(own, locations)
    request.addfinalizer(worker.stop)
    request.addfinalizer(partial(temporal.stop, own))
    procs.poll(partial(_retries, worker, 2), 60, "the worker's second retry")
    assert worker.alive(), worker.output()
    assert f"cannot reach Temporal at {own.temporal_address}: Connection refused" in worker.output()

    temporal.ensure(own)  # the dev server, with the namespace and search attributes
    _run_one_exposure(own, worker)


async def test_a_worker_waits_for_its_namespace_to_be_registered(
    settings: Settings, locations: list[str], request: pytest.FixtureRequest
) -> None:
    own = settings.model_copy(update={"temporal_namespace": f"late-{uuid.uuid4().hex[:8]}"})
    worker = WorkerProcess(own, locations)
    request.addfinalizer(worker.stop)
    procs.poll(partial(_retries, worker, 2), 60, "the worker's second retry")
    assert worker.alive(), worker.output()
    assert f"has no namespace '{own.temporal_namespace}'" in worker.output()

    await temporal.ensure_namespace(await Client.connect(own.temporal_address), own.temporal_namespace)
    await asyncio.to_thread(_run_one_exposure, own, worker)


async def test_a_watching_start_rides_out_a_temporal_outage(
    settings: Settings, locations: list[str], client: Client, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Temporal stops answering `start` for longer than the SDK's own retries (about 10 s)
    while it watches: it says so, waits, and reports the exposure completed (exit 0)."""
    relay = TcpProxy(host_port(settings.temporal_address))
    relay.start()
    request.addfinalizer(relay.refuse)
    # A workflow queue of its own that no worker serves until the outage is over, so the
    # exposure is still running while `start` cannot see it.
    own = settings.model_copy(update={"workflow_task_queue": f"unembargo-workflows-{uuid.uuid4().hex[:8]}"})
    watcher = own.model_copy(update={"temporal_address": f"127.0.0.1:{relay.port}"})
    day = fresh_day()
    exposure = seed_exposure(settings, day, 1)
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    args = ("start", "--window", "80h", "--lookback", LOOKBACK, "--day", str(day), "--json")
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = subprocess.Popen(
            [sys.executable, "-m", "unembargo.cli.app", *args],
            env={**os.environ, **watcher.environment()},
            stdout=out,
            stderr=err,
        )
    request.addfinalizer(start.kill)
    handle = client.get_workflow_handle(names.workflow_id("LSSTCam", exposure.obs_id))

    async def started() -> bool:
        try:
            await handle.describe()
        except RPCError:
            return False
        return True

    await poll_until(started, 120, "the exposure's workflow")
    relay.refuse()
    await poll_until(lambda: "Temporal unreachable" in stderr.read_text(), 60, "the outage note of `start`")
    assert start.poll() is None, stderr.read_text()
    relay.resume()

    worker = WorkerProcess(own, locations)
    request.addfinalizer(worker.stop)
    code = await asyncio.to_thread(start.wait, 300)
    assert code == 0, stdout.read_text() + stderr.read_text() + worker.output()
    [final] = json.loads(stdout.read_text())["exposures"]
    assert final["obs_id"] == exposure.obs_id
    assert (final["outcome"], final["final"]["status"]) == ("started", "completed")
    assert "retrying in 1s" in stderr.read_text() and "Traceback" not in stderr.read_text()
