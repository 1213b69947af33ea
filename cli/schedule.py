"""``unembargo schedule``: the Temporal Schedule that replaces the cron job."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from unembargo.models import names
from unembargo.models.settings import Settings, parse_duration

app = typer.Typer(no_args_is_help=True, help="Run `start`'s selection every N minutes (a Temporal Schedule).")
console = Console()
T = TypeVar("T")
Instrument = Annotated[str, typer.Option(help="Instrument name; one schedule per instrument.")]
Note = Annotated[str, typer.Option(help="Why; shown in the UI and in `schedule list`.")]


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err


def _run(settings: Settings, call: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, then make one schedule call."""
    from unembargo.engine.connection import connect

    async def main() -> T:
        return await call(await connect(settings))

    return asyncio.run(main())


@app.command()
def create(
    ctx: typer.Context,
    every: Annotated[str, typer.Option(help="How often to select and start (e.g. 15m).")] = "15m",
    window: Annotated[
        str | None,
        typer.Option(help="Embargo period for every exposure, overriding the configured rules (e.g. 80h)."),
    ] = None,
    lookback: Annotated[str, typer.Option(help="Ignore exposures that ended longer ago than this.")] = "30d",
    instrument: Instrument = "LSSTCam",
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    note: Note = "",
) -> None:
    """Create the instrument's schedule, or update it (interval, window, lookback)."""
    from unembargo.client.schedule import ScheduleRequest
    from unembargo.client.schedule import create as create_schedule

    settings: Settings = ctx.obj
    request = ScheduleRequest(
        instrument=instrument,
        every=_duration(every),
        window=_duration(window) if window is not None else None,
        lookback=_duration(lookback),
        paused=paused,
        note=note,
    )
    done = _run(settings, lambda client: create_schedule(client, settings, request))
    console.print(f"{done} {names.schedule_id(instrument)}: every {every}, "
                  f"window {window or 'from the embargo rules'}, lookback {lookback}")  # fmt: skip


@app.command("list")
def list_schedules(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every unembargo schedule: state, interval, counts, next and latest runs."""
    from unembargo.client.schedule import summaries

    settings: Settings = ctx.obj
    found = _run(settings, summaries)
    if as_json:
        print(json.dumps([asdict(s) for s in found], indent=2, default=str))
        return
    table = Table("schedule", "state", "every", "window", "runs", "skipped", "next run", "latest run")
    for s in found:
        state = f"paused ({s.note})" if s.paused and s.note else ("paused" if s.paused else "active")
        window = f"{s.window_s / 3600:g}h" if s.window_s is not None else "rules"
        latest = s.recent[-1][1] if s.recent else "-"
        next_run = s.next_runs[0].strftime("%H:%M:%S UTC") if s.next_runs and not s.paused else "-"
        table.add_row(s.id, state, ", ".join(f"{e / 60:g}m" for e in s.every), window,
                      str(s.actions), str(s.skipped_overlap), next_run, latest)  # fmt: skip
    console.print(table)


@app.command()
def pause(ctx: typer.Context, instrument: Instrument = "LSSTCam", note: Note = "paused") -> None:
    """Start no runs until resumed (a manual trigger still runs)."""
    from unembargo.client.schedule import pause as pause_schedule

    _run(ctx.obj, lambda client: pause_schedule(client, instrument, note))
    console.print(f"paused {names.schedule_id(instrument)}")


@app.command()
def resume(
    ctx: typer.Context, instrument: Instrument = "LSSTCam", note: Note = "resumed by unembargo"
) -> None:
    """Start runs on the interval again."""
    from unembargo.client.schedule import resume as resume_schedule

    _run(ctx.obj, lambda client: resume_schedule(client, instrument, note))
    console.print(f"resumed {names.schedule_id(instrument)}")


@app.command()
def trigger(ctx: typer.Context, instrument: Instrument = "LSSTCam") -> None:
    """Run the selection once now, paused or not."""
    from unembargo.client.schedule import trigger as trigger_schedule

    _run(ctx.obj, lambda client: trigger_schedule(client, instrument))
    console.print(f"triggered {names.schedule_id(instrument)}")


@app.command()
def delete(ctx: typer.Context, instrument: Instrument = "LSSTCam") -> None:
    """Delete the schedule; exposures it started go on."""
    from unembargo.client.schedule import delete as delete_schedule

    _run(ctx.obj, lambda client: delete_schedule(client, instrument))
    console.print(f"deleted {names.schedule_id(instrument)}")
