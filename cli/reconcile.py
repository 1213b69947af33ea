"""``unembargo reconcile``: which exposures of a day are not fully unembargoed; --repair them."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.cli.start import progress_table
from unembargo.client.reconcile import (
    ReconcileRequest,
    ReconcileResult,
    Reconciliation,
    reconcile_day,
    repair,
    run_reconcile,
)
from unembargo.engine.connection import connect
from unembargo.models.exposure import STEPS
from unembargo.models.names import InvalidName, check_day_obs, check_name
from unembargo.models.reconcile import CLASSES, NEEDS_ACTION, SOURCES, Verdict
from unembargo.models.settings import Settings

console = Console()

_STYLE = {
    "unembargoed": "green",
    "embargoed": "blue",
    "running": "yellow",
    "failed": "red",
    "half-done": "red",
    "missing": "red",
    "orphan": "magenta",
}


def reconcile(
    ctx: typer.Context,
    day: Annotated[int, typer.Option(help="The day_obs to reconcile (YYYYMMDD).")],
    instrument: Annotated[str, typer.Option(help="Instrument name.")] = "LSSTCam",
    do_repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Start a workflow for every missing or half-done exposure past its embargo, "
            "restart failed ones, watch them, then reconcile again.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Classify every exposure of a day: unembargoed, embargoed, running, failed,
    half-done, missing or orphan, each with its reason.

    Exit code 0 only when nothing is missing, half-done or failed (with --repair: afterwards).
    """
    settings: Settings = ctx.obj
    # A loopback endpoint (the local stack) takes dummy keys; real ones use the environment's.
    use_loopback_credentials(settings.s3_endpoint_url)
    try:
        request = ReconcileRequest(check_day_obs(day), check_name("instrument", instrument))
    except InvalidName as err:
        raise typer.BadParameter(str(err)) from err
    # A source that cannot be read is SourceUnavailable: the command line names it (exit 2).
    if as_json:
        result = asyncio.run(run_reconcile(settings, request, do_repair))
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        result = asyncio.run(_interactive(settings, request, do_repair))
    raise typer.Exit(0 if result.ok else 1)


async def _interactive(settings: Settings, request: ReconcileRequest, do_repair: bool) -> ReconcileResult:
    """Print the verdicts; with --repair, show the runs live, then the verdicts again."""
    client = await connect(settings)
    result = ReconcileResult(before=await reconcile_day(settings, request, client))
    _print(result.before)
    if not do_repair:
        return result
    with Live(console=console, auto_refresh=False) as live:
        result.repair = await repair(
            settings, client, result.before, lambda rows: live.update(progress_table(rows), refresh=True)
        )
    if result.repair.skipped:
        console.print(f"not repaired (not past their embargo, or not in the embargo butler): "
                      f"{', '.join(result.repair.skipped)}")  # fmt: skip
    if not result.repair.outcomes:
        console.print("repair: nothing to start")
        return result
    console.print(f"repair: {len(result.repair.outcomes)} exposure(s) (re)started; reconciling again")
    result.after = await reconcile_day(settings, request, client)
    _print(result.after)
    return result


def verdict_table(rec: Reconciliation) -> Table:
    """One row per exposure, grouped by class (those needing action last), with the reason."""
    table = Table(title=f"{rec.instrument} {rec.day_obs}")
    table.add_column("class", no_wrap=True)
    table.add_column("exposure", no_wrap=True)
    # zeirt: zip, export, ingest, register, tag.
    table.add_column("".join(step[0] for step in STEPS), no_wrap=True)
    table.add_column("reason")
    for klass in CLASSES:
        rows = rec.of(klass)
        style = _STYLE[klass]
        for i, verdict in enumerate(rows):
            label = f"[{style}]{klass}[/{style}]" if i == 0 else ""
            table.add_row(label, verdict.obs_id, _steps(verdict), verdict.reason)
        if rows:
            table.add_section()
    return table


def _steps(verdict: Verdict) -> str:
    return "".join("●" if step in verdict.done else "○" for step in STEPS)


def summary(rec: Reconciliation) -> str:
    """Counts per class, and where the time went."""
    counts = ", ".join(f"{n} {klass}" for klass, n in rec.counts.items() if n)
    action = sum(rec.counts[k] for k in NEEDS_ACTION)
    verdict = "nothing to do" if rec.ok else f"{action} need action (missing, half-done or failed)"
    took = ", ".join(f"{s} {rec.seconds[s]:.1f}" for s in SOURCES)
    return (
        f"{len(rec.verdicts)} exposure(s): {counts or 'none'}; {verdict}\n"
        f"inventory took {rec.seconds['total']:.1f} s (sources at once, each: {took} s)"
    )


def _print(rec: Reconciliation) -> None:
    console.print(verdict_table(rec))
    # Unwrapped, so a script can grep the counts whatever the terminal's width.
    console.print(summary(rec), soft_wrap=True)
