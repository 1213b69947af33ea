"""``unembargo worker`` and ``unembargo locations``: who serves which task queue."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, select

from unembargo.models.exposure import STEPS
from unembargo.models.flow import location_kinds
from unembargo.models.names import InvalidName, location_queue
from unembargo.models.settings import Settings
from unembargo.models.tables import Location, connect, upsert_location

console = Console()
locations_app = typer.Typer(no_args_is_help=True, help="Sites and locations (in the database).")


def worker(
    ctx: typer.Context,
    location: Annotated[
        list[str], typer.Option("--location", "-l", help="Serve this location's queue (repeatable).")
    ],
    workflows: Annotated[
        bool, typer.Option(help="Also run exposure workflows (their queue is location-free).")
    ] = True,
) -> None:
    """Serve the task queues of LOCATION(s) until interrupted."""
    from unembargo.engine.connection import connect as temporal_connect
    from unembargo.workers.worker import run

    settings: Settings = ctx.obj
    # A worker's log is its record of what it did: at least INFO (--verbose: DEBUG).
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))

    async def main() -> None:
        # Started before its Temporal server (a reboot, a stack coming up): wait for it.
        await run(await temporal_connect(settings, wait=True), settings, location, workflows)

    console.print(f"serving {', '.join(location_queue(n) for n in location)}; Ctrl-C to stop")
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


@locations_app.command("list")
def list_locations(ctx: typer.Context) -> None:
    """Every location, its kind, storage, priority and task queue."""
    settings: Settings = ctx.obj
    table = Table("name", "site", "kind", "storage", "priority", "active", "task queue")
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for loc in session.exec(select(Location).order_by(Location.site, Location.name)):
            table.add_row(loc.name, loc.site, loc.kind, loc.storage, str(loc.priority),
                          "yes" if loc.active else "no", location_queue(loc.name))  # fmt: skip
    console.print(table)


@locations_app.command("add")
def add_location(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Location name (also names its task queue).")],
    site: Annotated[str, typer.Option(help="Site that hosts it.")],
    kind: Annotated[str, typer.Option(help=f"One of: {', '.join(location_kinds(STEPS))}.")],
    storage: Annotated[str, typer.Option(help="Mount point, URI or endpoint it stands for.")],
    priority: Annotated[int, typer.Option(help="Highest active location of a kind is used.")] = 0,
    active: Annotated[bool, typer.Option(help="Inactive locations get no new work.")] = True,
) -> None:
    """Create or update a location."""
    if kind not in location_kinds(STEPS):
        raise typer.BadParameter(f"unknown kind {kind!r}", param_hint="--kind")
    try:
        location_queue(name)
    except InvalidName as err:
        raise typer.BadParameter(str(err), param_hint="NAME") from err
    settings: Settings = ctx.obj
    with Session(connect(settings.database_url.get_secret_value())) as session:
        upsert_location(session, Location(name=name, site=site, kind=kind, storage=storage,
                                          priority=priority, active=active))  # fmt: skip
    console.print(f"location {name} ({kind}) serves queue {location_queue(name)}")
