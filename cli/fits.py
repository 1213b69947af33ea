"""``unembargo fits``: the FITS dataflow (DHS disk -> dataflow -> destinations -> archive)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from unembargo.models.fits import FitsSettings
from unembargo.models.fits_flow import requeue_schedule_id
from unembargo.models.settings import Settings, parse_duration

if TYPE_CHECKING:
    from unembargo.client.fits import FitsStatus

app = typer.Typer(no_args_is_help=True, help="FITS files: watch the DHS disk, ingest, export, preview.")
console = Console()
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _session(settings: Settings) -> Session:
    from unembargo.models.tables import connect

    return Session(connect(settings.database_url.get_secret_value()))


@app.command()
def watch(ctx: typer.Context) -> None:
    """Start the DHS poller (UNEMBARGO_FITS_DHS, every UNEMBARGO_FITS_POLL_S seconds); a no-op
    when it runs already. It is a workflow: it outlives this command and catches up after outages."""
    from unembargo.client.fits import start_watch
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj
    fits = FitsSettings()

    async def main() -> str:
        with _session(settings) as session:
            return await start_watch(await connect(settings), settings, fits, session)

    console.print(f"{asyncio.run(main())}: watching {fits.dhs} every {fits.poll_s:g}s")


@app.command()
def requeue(
    ctx: typer.Context,
    file_re: Annotated[str | None, typer.Option("--file-re", help="Files whose name matches REGEX.")] = None,
    days: Annotated[float | None, typer.Option(help="Files modified in the last N days.")] = None,
    path: Annotated[
        str | None, typer.Option(help="A file or folder of the dataflow disk (relative to it).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-ingest even when lastmod is unchanged.")] = False,
    force_md5: Annotated[bool, typer.Option("--force-md5", help="Decide by md5 instead of lastmod.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files, start nothing.")] = False,
    every: Annotated[
        str | None,
        typer.Option(help="Instead, a Temporal Schedule doing this every DURATION (24h); needs --days."),
    ] = None,
) -> None:
    """Run files through ingest, export and the archive steps again (add_to_ingest_queue)."""
    from unembargo.client.fits import requeue as requeue_files
    from unembargo.client.fits import schedule_requeue, select_files
    from unembargo.engine.connection import connect

    if file_re is None and days is None and path is None:
        raise typer.BadParameter("give --file-re, --days or --path")
    settings: Settings = ctx.obj
    fits = FitsSettings()
    if every is not None:
        if days is None or path is not None:
            raise typer.BadParameter("a schedule re-checks recent days: give --days (and no --path)")
        try:
            interval = parse_duration(every)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--every") from err

        async def scheduled() -> str:
            with _session(settings) as session:
                return await schedule_requeue(
                    await connect(settings),
                    settings,
                    fits,
                    session,
                    interval,
                    days,
                    force,
                    force_md5,
                    file_re,
                )

        console.print(
            f"{asyncio.run(scheduled())} schedule {requeue_schedule_id(fits.dataflow)} (every {every})"
        )
        return
    with _session(settings) as session:
        try:
            names = select_files(session, fits, file_re, days, path)
        except (ValueError, FileNotFoundError) as err:
            raise typer.BadParameter(str(err)) from err
        if dry_run or not names:
            for name in names:
                console.print(name)
            console.print(f"{len(names)} file(s){' would be requeued' if dry_run else ''}")
            return

        async def main() -> list[str]:
            return await requeue_files(
                await connect(settings), settings, fits, session, names, force, force_md5
            )

        ids = asyncio.run(main())
    console.print(f"requeued {len(ids)} file(s)")


@app.command()
def status(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Per step: the files waiting, in progress and failed (with the exception and traceback);
    the DHS files that are not valid FITS; destinations backed off."""
    from unembargo.client.fits import status as flow_status
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj
    fits = FitsSettings()

    async def main() -> FitsStatus:
        with _session(settings) as session:
            return await flow_status(await connect(settings), fits, session)

    found = asyncio.run(main())
    if as_json:
        console.print_json(json.dumps(asdict(found), default=str))
        return
    _print(found)


def _print(found: FitsStatus) -> None:
    scan = found.last_scan
    last = f" (last scan: {scan.seen} seen, {scan.started} started, {scan.waiting} settling)" if scan else ""
    console.print(f"watch: {found.watch}{last}; {found.done} file run(s) completed")
    table = Table("step", "waiting", "in progress", "failed")
    for step, counts in found.steps.items():
        table.add_row(
            step,
            _names(counts.waiting),
            _names(counts.in_progress),
            f"[red]{len(counts.failed)}[/red]" if counts.failed else "0",
        )
    console.print(table)
    for step, counts in found.steps.items():
        for f in counts.failed:
            console.print(f"[red]failed[/red] {f.name} at {step}: {f.error}", soft_wrap=True)
            if f.traceback:
                console.print(f.traceback.rstrip(), style="dim", soft_wrap=True, highlight=False)
    for name, problem in found.invalid.items():
        console.print(f"[red]not valid FITS[/red] (on the DHS disk) {name}: {problem}", soft_wrap=True)
    for name, why in found.destinations.items():
        console.print(f"[yellow]destination {name}[/yellow]: {why}", soft_wrap=True)


def _names(items: list[str], shown: int = 3) -> str:
    if not items:
        return "0"
    more = f" +{len(items) - shown}" if len(items) > shown else ""
    return f"{len(items)}: " + ", ".join(items[:shown]) + more
