"""The `unembargo` command as users type it, against the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import WorkerProcess, fresh_day
from unembargo.devstack.seed import seed_exposure
from unembargo.models.settings import Settings

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


def test_bad_duration_is_a_usage_error(settings: Settings) -> None:
    out = unembargo(settings, "start", "--window", "eighty hours")
    assert out.returncode == 2
    assert "not a duration" in out.stderr


def test_locations_add_and_list(settings: Settings) -> None:
    added = unembargo(
        settings, "locations", "add", "summit-disk", "--site", "summit", "--kind", "destination",
        "--storage", "/data/raw", "--priority", "-5",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listing = unembargo(settings, "locations", "list")
    assert "summit-disk" in listing.stdout and "unembargo-loc-summit-disk" in listing.stdout
    bad = unembargo(settings, "locations", "add", "../x", "--site", "s", "--kind", "rucio", "--storage", "x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
