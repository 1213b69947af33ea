"""``unembargo start``: one workflow per exposure past its embargo period."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from unembargo.client.progress import Progress
from unembargo.client.run import StartRequest, StartResult, lookback_in_force, run_start
from unembargo.models import names
from unembargo.models.settings import Settings, parse_duration

console = Console()
# Outage notes beside --json output (stdout stays the JSON document).
errors = Console(stderr=True)

_STYLE = {"completed": "green", "failed": "red", "running": "yellow"}


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err


def progress_table(rows: list[Progress], note: str | None = None) -> Table:
    """One line per exposure: status, current step, error; counts (and ``note``) in the caption."""
    table = Table("exposure", "status", "step", "error")
    for row in rows:
        style = _STYLE.get(row.status, "")
        status = f"[{style}]{row.status}[/{style}]" if style else row.status
        table.add_row(row.workflow_id.removeprefix("unembargo-"), status, row.step, row.error or "")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(r.status for r in rows).items()))
    table.caption = f"{counts}; [yellow]{escape(note)}[/yellow]" if note else counts
    return table


def _print_outage(note: str) -> None:
    errors.print(note, markup=False, highlight=False)


class _LiveView:
    """The live table: each snapshot, and an outage note until the next snapshot."""

    def __init__(self, live: Live) -> None:
        self._live = live
        self._rows: list[Progress] = []

    def update(self, rows: list[Progress]) -> None:
        self._rows = rows
        self._live.update(progress_table(rows), refresh=True)

    def outage(self, note: str) -> None:
        self._live.update(progress_table(self._rows, note), refresh=True)


def start(
    ctx: typer.Context,
    window: Annotated[
        str | None,
        typer.Option(help="Embargo period for every exposure, overriding the configured rules (e.g. 80h)."),
    ] = None,
    lookback: Annotated[
        str | None,
        typer.Option(help="Ignore exposures that ended longer ago than this (default 30d, none with --day)."),
    ] = None,
    day: Annotated[int | None, typer.Option(help="Only this day_obs (YYYYMMDD).")] = None,
    instrument: Annotated[str, typer.Option(help="Instrument name.")] = "LSSTCam",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would start; start nothing.")] = False,
    restart_failed: Annotated[
        bool, typer.Option("--restart-failed", help="Run again exposures whose last run failed.")
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once started.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Start one durable workflow per exposure whose embargo has passed.

    Exposures already running or done are reported and not started again; failed
    ones only with --restart-failed (their finished steps are not redone).
    Exit code 0 only if no selected exposure failed.
    """
    settings: Settings = ctx.obj
    try:
        names.check_name("instrument", instrument)
        if day is not None:
            names.check_day_obs(day)
    except names.InvalidName as err:
        raise typer.BadParameter(str(err)) from err
    request = StartRequest(
        instrument=instrument,
        window=_duration(window) if window is not None else None,
        lookback=_duration(lookback) if lookback is not None else None,
        day_obs=day,
        dry_run=dry_run,
        restart_failed=restart_failed,
    )
    wait = not (no_wait or dry_run)
    if as_json or not wait:
        result = asyncio.run(run_start(settings, request, wait=wait, on_outage=_print_outage))
    else:
        with Live(console=console, auto_refresh=False) as live:
            view = _LiveView(live)
            result = asyncio.run(
                run_start(settings, request, wait=True, on_update=view.update, on_outage=view.outage)
            )
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        _print_summary(settings, request, result)
    raise typer.Exit(0 if result.ok else 1)


def _print_summary(settings: Settings, request: StartRequest, result: StartResult) -> None:
    console.line()
    if not result.outcomes:
        verb = "would start" if result.selected else "nothing to start"
        console.print(f"{len(result.selected)} exposure(s) past their embargo; {verb}")
        lookback = lookback_in_force(request)
        if not result.selected and lookback is not None:
            # Say what bounded the selection: an older exposure needs --lookback or --day.
            console.print(f"  (only exposures that ended in the last {lookback}: see --lookback, --day)")
        for exp in result.selected:
            console.print(f"  {exp.instrument} {exp.day_obs} {exp.obs_id}")
    else:
        counts = Counter(o.outcome for o in result.outcomes)
        console.print(
            f"{len(result.selected)} exposure(s) past their embargo: "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        )
    if result.finished:
        done = Counter(p.status for p in result.finished)
        console.print("finished: " + ", ".join(f"{n} {k}" for k, n in sorted(done.items())))
    console.print(
        f"Temporal web UI: {settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}/workflows"
    )
