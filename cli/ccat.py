"""``unembargo ccat``: the CCAT Data Transfer flow (docs/ccat.md).

unembargo ccat file OBS FILE... --at SOURCE     # file raw files, start the package workflow
unembargo ccat status [PACKAGE] [--json]        # where is it, how many copies, which verified
unembargo ccat stage PACKAGE --to PROCESSING    # copy from the best archive; `unstage` cleans up
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError

from unembargo.models.ccat import BUNDLE, FILE_SET, PACKAGE, CcatPolicy
from unembargo.models.errors import BadInput
from unembargo.models.locations import NoLocation
from unembargo.models.settings import Settings
from unembargo.models.tables import connect

app = typer.Typer(no_args_is_help=True, help="CCAT: package, transfer, archive, stage and delete raw data.")
console = Console()
At = Annotated[str, typer.Option("--at", help="The location (its name in `unembargo locations list`).")]


@contextmanager
def _named_errors() -> Iterator[None]:
    """Bad input (an unknown location, a file outside its SOURCE) or a run that failed under a
    named error: its name and message, exit 1, no traceback."""
    try:
        yield
    except (BadInput, NoLocation) as err:
        console.print(f"{type(err).__name__}: {err}", style="red")
        raise typer.Exit(1) from None
    except WorkflowFailureError as err:
        # A run that failed under a named error (DeletionRefused, ChecksumMismatch, ...).
        cause = err.cause.cause if isinstance(err.cause, ActivityError) else err.cause
        name = getattr(cause, "type", None) or type(cause).__name__
        console.print(f"{name}: {getattr(cause, 'message', cause)}", style="red")
        raise typer.Exit(1) from None


def _engine(ctx: typer.Context) -> Engine:
    settings: Settings = ctx.obj
    return connect(settings.database_url.get_secret_value())


@app.command("file")
def file_(
    ctx: typer.Context,
    observation: Annotated[str, typer.Argument(help="Observation id (also the package's name).")],
    files: Annotated[list[Path], typer.Argument(help="Raw files, already under the SOURCE's path.")],
    at: At,
    module: Annotated[str, typer.Option(help="Instrument module that wrote them.")] = "",
    package: Annotated[bool, typer.Option(help="Start the package workflow once filed.")] = True,
) -> None:
    """Register an observation's raw files at a SOURCE (size and sha256), then package it."""
    from unembargo.client.ccat import file_observation

    with Session(_engine(ctx)) as session, _named_errors():
        got = file_observation(session, at, observation, files, module)
    console.print(f"{observation}: {got.filed} filed, {got.already} already filed at {at}")
    if package:
        _start_package(ctx, observation, at)


@app.command()
def watch(
    ctx: typer.Context,
    at: At,
    poll_s: Annotated[float, typer.Option(help="Seconds between scans of the folder.")] = 30.0,
    min_age_s: Annotated[
        float,
        typer.Option(help="A file is complete once this old and its size unchanged since the last scan."),
    ] = 30.0,
) -> None:
    """Watch a SOURCE's folder: file each complete observation folder (one folder per
    observation) once, then package it. A workflow: it outlives this command, catches up
    after outages; a no-op when it runs already."""
    from unembargo.client.ccat import start_watch
    from unembargo.engine.connection import connect as temporal_connect

    settings: Settings = ctx.obj

    async def main() -> tuple[str, str]:
        client = await temporal_connect(settings)
        with Session(_engine(ctx)) as session:
            policy = CcatPolicy(heartbeat_s=settings.heartbeat_timeout.total_seconds())
            return await start_watch(
                client, session, settings.workflow_task_queue, at, policy, poll_s, min_age_s
            )

    with _named_errors():
        wid, outcome = asyncio.run(main())
    console.print(f"{wid}: {outcome}, scanning {at} every {poll_s:g}s")


@app.command("package")
def package_(
    ctx: typer.Context, observation: Annotated[str, typer.Argument(help="Observation id.")], at: At
) -> None:
    """Start the package workflow of a filed observation (a no-op if it runs or ran)."""
    _start_package(ctx, observation, at)


def _start_package(ctx: typer.Context, observation: str, at: str) -> None:
    from unembargo.client.ccat import start_package
    from unembargo.engine.connection import connect as temporal_connect

    settings: Settings = ctx.obj

    async def main() -> tuple[str, str]:
        client = await temporal_connect(settings)
        with Session(_engine(ctx)) as session:
            return await start_package(
                client,
                session,
                settings.workflow_task_queue,
                observation,
                at,
                CcatPolicy(heartbeat_s=settings.heartbeat_timeout.total_seconds()),
            )

    with _named_errors():
        wid, outcome = asyncio.run(main())
    console.print(f"{wid}: {outcome}")


@app.command()
def status(
    ctx: typer.Context,
    package: Annotated[str | None, typer.Argument(help="A package; all recent ones if omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option(help="Packages shown without PACKAGE.")] = 50,
) -> None:
    """Where a package is: its state, its bundle, each copy (location, state, verified)."""
    from unembargo.client.ccat import package_view, package_views

    with Session(_engine(ctx)) as session:
        if package is None:
            views = package_views(session, limit)
        else:
            one = package_view(session, package)
            if one is None:
                raise typer.BadParameter(f"no package or filed observation {package!r}", param_hint="PACKAGE")
            views = [one]
    if as_json:
        rows = [{**asdict(v), "verified_archives": v.verified_archives} for v in views]
        console.print_json(json.dumps(rows if package is None else rows[0]))
        return
    for v in views:
        table = Table(
            title=f"{v.package}: {v.state}, {v.files} files, {v.size} bytes, "
            f"bundle {v.transfer or '-'} to {v.destination_site or '-'}, "
            f"verified at {len(v.verified_archives)} archive site(s)"
        )
        for col in ("location", "site", "type", "what", "state", "verified", "bytes", "path"):
            table.add_column(col)
        for c in v.copies:
            table.add_row(
                c.location,
                c.site,
                c.type,
                c.kind,
                c.state,
                "yes" if c.verified else "no",
                str(c.size),
                c.relpath,
            )
        console.print(table)


@app.command()
def stage(
    ctx: typer.Context,
    package: Annotated[str, typer.Argument(help="An archived package.")],
    to: Annotated[str, typer.Option("--to", help="A PROCESSING location.")],
    wait: Annotated[bool, typer.Option(help="Wait until staged.")] = True,
) -> None:
    """Copy a package from its best verified archive copy to a processing location, unpacked."""
    from unembargo.client.ccat import start_stage
    from unembargo.engine.connection import connect as temporal_connect

    settings: Settings = ctx.obj

    async def main() -> str:
        client = await temporal_connect(settings)
        with Session(_engine(ctx)) as session:
            handle = await start_stage(client, session, settings.workflow_task_queue, package, to)
        if not wait:
            return handle.id
        return json.dumps(await handle.result())

    with _named_errors():
        console.print(asyncio.run(main()))


def _delete(ctx: typer.Context, kind: str, unit: str, at: str, wait: bool) -> None:
    from unembargo.client.ccat import start_deletion
    from unembargo.engine.connection import connect as temporal_connect

    settings: Settings = ctx.obj

    async def main() -> str:
        client = await temporal_connect(settings)
        with Session(_engine(ctx)) as session:
            handle = await start_deletion(client, session, settings.workflow_task_queue, kind, unit, at)
        if not wait:
            return handle.id
        return json.dumps(await handle.result())

    with _named_errors():
        console.print(asyncio.run(main()))


@app.command()
def unstage(
    ctx: typer.Context,
    package: Annotated[str, typer.Argument(help="A staged package.")],
    at: At,
    wait: Annotated[bool, typer.Option(help="Wait until deleted.")] = True,
) -> None:
    """Remove a staged copy once its processing is done."""
    _delete(ctx, PACKAGE, package, at, wait)


@app.command()
def delete(
    ctx: typer.Context,
    unit: Annotated[str, typer.Argument(help="A package (or transfer package with --bundle).")],
    at: At,
    files: Annotated[bool, typer.Option("--files", help="The package's raw files at a SOURCE.")] = False,
    bundle: Annotated[bool, typer.Option("--bundle", help="UNIT is a transfer package.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait until deleted.")] = True,
) -> None:
    """Delete one copy; refused (DeletionRefused) unless the package is archived and verified
    at enough archive sites (UNEMBARGO_CCAT_MIN_ARCHIVE_COPIES)."""
    _delete(ctx, FILE_SET if files else BUNDLE if bundle else PACKAGE, unit, at, wait)
