"""``unembargo rawintegrity``: raw files from the online storage to tape (put, status, decide)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from unembargo.models.rawintegrity import GIVE_UP, RETRY, RawIntegritySettings
from unembargo.models.settings import Settings

if TYPE_CHECKING:
    from unembargo.client.rawintegrity import RawStatus

app = typer.Typer(no_args_is_help=True, help="Raw files to tape; online copies removed once tape is verified")
console = Console()
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _session(settings: Settings) -> Session:
    from unembargo.models.tables import connect

    return Session(connect(settings.database_url.get_secret_value()))


@app.command()
def put(
    ctx: typer.Context,
    lfns: Annotated[list[str] | None, typer.Argument(help="LFNs (paths under the online storage).")] = None,
    run: Annotated[str | None, typer.Option(help="Every online file under this folder (a run).")] = None,
) -> None:
    """Start a workflow per raw file; a file on its way is left alone, a Done one is not put again."""
    from unembargo.client.rawintegrity import online_lfns, route
    from unembargo.client.rawintegrity import put as put_files
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj
    config = RawIntegritySettings()
    with _session(settings) as session:
        names = list(lfns or []) + (online_lfns(session, config, run) if run else [])
        if not names:
            raise typer.BadParameter("give LFNs or --run FOLDER (with files in it)")
        where = route(session, config)

    async def main() -> dict[str, int]:
        return dict(await put_files(await connect(settings), settings, where, names))

    outcomes = asyncio.run(main())
    console.print(", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())))


@app.command()
def status(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Option(help="Only files under this folder (a run).")] = None,
    as_json: AsJson = False,
) -> None:
    """Files by state and step, what the online storage still holds, and files waiting for an operator."""
    from unembargo.client.rawintegrity import status as flow_status
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj

    async def main() -> RawStatus:
        return await flow_status(await connect(settings), run)

    found = asyncio.run(main())
    if as_json:
        console.print_json(json.dumps(asdict(found)))
        return
    _print(found)


def _print(found: RawStatus) -> None:
    table = Table("state", "files")
    for state, n in sorted(found.by_state.items()):
        table.add_row(state, str(n))
    console.print(table)
    steps = Table("step", "files")
    for step, n in sorted(found.by_step.items()):
        steps.add_row(step, str(n))
    console.print(steps)
    console.print(f"waiting: {found.waiting_files} file(s), {found.waiting_bytes} bytes still online")
    console.print(f"done in the last hour: {found.done_last_hour}")
    for w in found.operator:
        console.print(f"[yellow]operator[/yellow] {w.lfn}: {w.reason}", soft_wrap=True)
    if found.operator:
        console.print("decide with `unembargo rawintegrity decide LFN retry|give_up`")


@app.command()
def reconcile(
    ctx: typer.Context,
    run: Annotated[str, typer.Option(help="The run's folder (under the online storage).")],
    as_json: AsJson = False,
) -> None:
    """Each file of a run by what online, tape and Rucio hold of it (done, registered, waiting,
    bad_tape, lost); exits 1 if any is lost (gone online without a verified, registered copy)."""
    from unembargo.adapters.rucio_client import connect
    from unembargo.client.rawintegrity import reconcile as classify_run
    from unembargo.models.rawintegrity import LOST

    settings: Settings = ctx.obj
    with _session(settings) as session:
        found = classify_run(session, RawIntegritySettings(), connect(settings), settings.rucio_scope, run)
    if as_json:
        console.print_json(json.dumps(found))
    else:
        table = Table("class", "files", "first")
        for cls, lfns in sorted(found.items()):
            table.add_row(cls, str(len(lfns)), lfns[0])
        console.print(table)
    if found.get(LOST):
        raise typer.Exit(1)


@app.command()
def decide(
    ctx: typer.Context,
    lfn: Annotated[str, typer.Argument(help="The file waiting for an operator.")],
    decision: Annotated[
        str, typer.Argument(help=f"{RETRY} (transfer or wait again) or {GIVE_UP} (keep it online).")
    ],
) -> None:
    """Tell a file waiting for an operator what to do."""
    from unembargo.client.rawintegrity import decide as send
    from unembargo.engine.connection import connect

    if decision not in (RETRY, GIVE_UP):
        raise typer.BadParameter(f"use {RETRY} or {GIVE_UP}")
    settings: Settings = ctx.obj

    async def main() -> None:
        await send(await connect(settings), lfn, decision)

    asyncio.run(main())
    console.print(f"{lfn}: {decision}")
