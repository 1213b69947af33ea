"""The rules `unembargo start` applies before and while it watches: which days are dates,
which exposures a named day selects, the heartbeat timeout it asks for, and how long
it waits for a Temporal that does not answer."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from temporalio.service import RPCError, RPCStatusCode

from unembargo.adapters.selection import rule_windows
from unembargo.cli.start import progress_table
from unembargo.client.progress import Progress, outage_note
from unembargo.client.run import DEFAULT_LOOKBACK, StartRequest, lookback_in_force
from unembargo.devstack.procs import free_ports
from unembargo.engine.connection import MAX_RETRY_SECONDS, riding_out
from unembargo.engine.errors import TemporalUnreachable
from unembargo.engine.starter import settings_policy
from unembargo.models import names
from unembargo.models.settings import EmbargoRule, Settings

# ---------------------------------------------------------------- day_obs is a date


@pytest.mark.parametrize("bad", [20261131, 20260230, 20250229, 21000229, "20260431", 20260931])
def test_a_day_obs_the_calendar_does_not_have_is_refused(bad: int | str) -> None:
    with pytest.raises(names.InvalidName, match="is not a date"):
        names.check_day_obs(bad)


@pytest.mark.parametrize("good", [20240229, 20000229, 20261130, 20260228, 20251231, "20260101"])
def test_calendar_days_are_accepted(good: int | str) -> None:
    assert names.check_day_obs(good) == int(good)


# ---------------------------------------------------------------- a named day and the lookback


def test_a_named_day_is_not_cut_by_the_default_lookback() -> None:
    assert lookback_in_force(StartRequest(day_obs=20200101)) is None
    assert lookback_in_force(StartRequest()) == DEFAULT_LOOKBACK == timedelta(days=30)
    # Asked for explicitly, a lookback applies with a day too.
    assert lookback_in_force(StartRequest(day_obs=20200101, lookback=timedelta(days=2))) == timedelta(days=2)


def test_no_lookback_leaves_the_window_open_below() -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    rule = EmbargoRule(where="", period=timedelta(hours=80))
    [win] = rule_windows([rule], now, None)
    assert win.lo is None and win.hi == now - timedelta(hours=80) and not win.empty
    # A lookback shorter than the period still selects nothing, as before.
    [short] = rule_windows([rule], now, timedelta(hours=1))
    assert short.empty


# ---------------------------------------------------------------- the heartbeat timeout


def test_the_heartbeat_timeout_is_a_setting_the_workflows_get(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_policy(Settings()).heartbeat_s == 10.0
    monkeypatch.setenv("UNEMBARGO_HEARTBEAT_TIMEOUT", "PT8S")
    assert settings_policy(Settings()).heartbeat_s == 8.0
    # It reaches child processes (the stack's worker, `dev up`) like any other setting.
    assert Settings().environment()["UNEMBARGO_HEARTBEAT_TIMEOUT"] == "PT8S"


# ---------------------------------------------------------------- riding out an outage


def _unavailable() -> RPCError:
    return RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b"")


class FakeTime:
    """A clock that moves only when slept on, and the record of the sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _describe(failures: int, call_seconds: float, time: FakeTime) -> Iterator[object]:
    """A describe that fails ``failures`` times (each after the SDK's own retries), then answers."""
    for _ in range(failures):
        time.now += call_seconds
        yield _unavailable()
    while True:
        yield "described"


async def test_a_watch_rides_out_an_outage_and_says_so() -> None:
    time = FakeTime()
    answers = _describe(failures=6, call_seconds=10.0, time=time)
    notes: list[str] = []

    async def describe() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def on_retry(reason: str, seconds: float) -> None:
        notes.append(outage_note(reason, seconds))

    got = await riding_out(
        describe, timedelta(minutes=10), on_retry, "t:7233", sleep=time.sleep, clock=time.clock
    )
    assert got == "described"
    assert time.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert notes[0] == "Temporal unreachable (tcp connect error), retrying in 1s"
    assert notes[-1].endswith("retrying in 30s")


async def test_backoff_is_capped_and_a_watch_gives_up_after_the_limit() -> None:
    time = FakeTime()

    async def describe() -> object:
        time.now += 10.0  # the SDK's own retries before the error reaches us
        raise _unavailable()

    with pytest.raises(TemporalUnreachable, match="did not answer for 310 s .*temporal_outage_limit"):
        await riding_out(
            describe, timedelta(minutes=5), lambda r, s: None, "t:7233", sleep=time.sleep, clock=time.clock
        )
    assert max(time.sleeps) == MAX_RETRY_SECONDS
    # The last wait ends at the limit, counted from the start of the first unanswered call;
    # the call after it is the last.
    assert time.now == 300.0 + 10.0


async def test_an_error_that_is_not_an_outage_is_not_retried() -> None:
    time = FakeTime()

    async def describe() -> object:
        raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")

    with pytest.raises(RPCError, match="not found"):
        await riding_out(
            describe, timedelta(minutes=10), lambda r, s: None, "t:7233", sleep=time.sleep, clock=time.clock
        )
    assert time.sleeps == []


def _rendered(table: object) -> str:
    out = Console(file=io.StringIO(), width=200, color_system=None)
    out.print(table)
    return " ".join(out.file.getvalue().split())  # type: ignore[attr-defined]


def test_the_live_table_shows_the_outage_in_its_caption() -> None:
    rows = [Progress("unembargo-LSSTCam-MC_O_20251231_000010", "running", "zip")]
    note = outage_note("tcp connect error [bold]", 4)
    shown = _rendered(progress_table(rows, note))
    assert "1 running; Temporal unreachable (tcp connect error [bold]), retrying in 4s" in shown
    assert "Temporal unreachable" not in _rendered(progress_table(rows))


def test_temporal_unreachable_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """What `start` says when it gives up, as every command does: no traceback, exit 2."""
    env = {**os.environ, "UNEMBARGO_TEMPORAL_ADDRESS": f"127.0.0.1:{free_ports()[0]}"}
    out = subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", "status", "MC_O_20251231_000010"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "TemporalUnreachable: cannot reach Temporal at 127.0.0.1:" in out.stderr
    assert "(`unembargo dev up` starts the local stack's Temporal)" in out.stderr
    assert "Traceback" not in out.stderr
