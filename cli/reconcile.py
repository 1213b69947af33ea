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
from unembargo.models.reconcile import CLASSES, NEEDS_ACTION, NOT_ARRIVED, SOURCES, Verdict
from unembargo.models.settings import Settings

console = Console()

_STYLE = {
    "unembargoed": "green",
    "embargoed": "blue",
    "arriving": "yellow",
    "running": "yellow",
    "failed": "red",
    "half-done": "red",
    "missing": "red",
    "incomplete": "red",
    "no-butler-record": "red",
    "corrupt": "red",
    "orphan": "magenta",
}
# The step column: one mark per step, in step order (● done, ○ not).
STEPS_HEADER = "steps " + " ".join(str(step) for step in STEPS)


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
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also compare content, not just names: every zip's members with the bucket "
            "(sizes, md5s, indexes), its butler index with the main butler's datasets, every "
            "yaml's records with the embargo butler's, and every registered file's "
            "bytes/adler32/md5 with Rucio's. Reads every zip and yaml of the day.",
        ),
    ] = False,
) -> None:
    """Classify every exposure of a day: unembargoed, embargoed, arriving, running, failed,
    half-done, missing, incomplete, no-butler-record, corrupt (--verify) or orphan, each
    with its reason (and its arrival workflow's state); and list staging files left in
    the day folder.

    Exit code 0 only when no exposure is missing, half-done, failed, incomplete,
    no-butler-record or corrupt and no stale staging file is left (with --repair: afterwards).
    """
    settings: Settings = ctx.obj
    # A loopback endpoint (the local stack) takes dummy keys; real ones use the environment's.
    use_loopback_credentials(settings.s3_endpoint_url)
    try:
        request = ReconcileRequest(check_day_obs(day), check_name("instrument", instrument), verify=verify)
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
    """One row per exposure, grouped by class (those needing action last), with the reason.

    An ``arrival`` column (its arrival workflow's state) when any exposure of the day has
    an arrival workflow; a day ingested another way has none, and no such column.
    """
    arrivals = any(v.arrival is not None for v in rec.verdicts)
    table = Table(title=f"{rec.instrument} {rec.day_obs}")
    table.add_column("class", no_wrap=True)
    table.add_column("exposure", no_wrap=True)
    table.add_column(STEPS_HEADER, no_wrap=True)
    if arrivals:
        table.add_column("arrival", no_wrap=True)
    table.add_column("reason")
    for klass in CLASSES:
        rows = rec.of(klass)
        style = _STYLE[klass]
        for i, verdict in enumerate(rows):
            label = f"[{style}]{klass}[/{style}]" if i == 0 else ""
            arrival = [verdict.arrival.state if verdict.arrival else NOT_ARRIVED] if arrivals else []
            table.add_row(label, verdict.obs_id, _steps(verdict), *arrival, verdict.reason)
        if rows:
            table.add_section()
    return table


def _steps(verdict: Verdict) -> str:
    """One mark under each step name of the header."""
    marks = ("●" if step in verdict.done else "○" for step in STEPS)
    return "      " + " ".join(mark.ljust(len(str(step))) for mark, step in zip(marks, STEPS, strict=True))


def staging_table(rec: Reconciliation) -> Table:
    """Staging files in the day folder: whose, made by which tool, stale or in use."""
    table = Table(title=f"staging files in {rec.instrument}/{rec.day_obs}")
    for column in ("file", "bytes", "exposure", "left by", "state"):
        table.add_column(column, no_wrap=column != "file")
    for f in rec.staging:
        tool = "unembargo (a crashed attempt)" if f.made_by == "ours" else "the old cron tool"
        state = "in use? its workflow is running" if f.in_use else "[red]stale: remove it[/red]"
        table.add_row(f.name, str(f.size), f.obs_id or "?", tool, state)
    return table


def summary(rec: Reconciliation) -> str:
    """Counts per class, and where the time went."""
    counts = ", ".join(f"{n} {klass}" for klass, n in rec.counts.items() if n)
    action = sum(rec.counts[k] for k in NEEDS_ACTION)
    needing = ", ".join(NEEDS_ACTION)
    verdict = "nothing to do" if rec.ok else f"{action} need action ({needing})"
    if rec.stale:
        verdict += f"; {len(rec.stale)} stale staging file(s)"
    took = ", ".join(f"{s} {rec.seconds[s]:.1f}" for s in SOURCES)
    deep = f"; verify {rec.seconds['verify']:.1f} s" if "verify" in rec.seconds else ""
    return (
        f"{len(rec.verdicts)} exposure(s): {counts or 'none'}; {verdict}\n"
        f"inventory took {rec.seconds['total']:.1f} s (sources at once, each: {took} s{deep})"
    )


def _print(rec: Reconciliation) -> None:
    console.print(verdict_table(rec))
    if rec.staging:
        console.print(staging_table(rec))
    # Unwrapped, so a script can grep the counts whatever the terminal's width.
    console.print(summary(rec), soft_wrap=True)
