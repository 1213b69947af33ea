"""``unembargo locations``: sites, data locations, their task queues and who polls them."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from unembargo.client import locations
from unembargo.models.locations import LocationType, Operation, StorageType
from unembargo.models.names import InvalidName
from unembargo.models.settings import Settings

console = Console()
app = typer.Typer(no_args_is_help=True, help="Sites, data locations and their task queues (in the database).")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_json(value: object) -> None:
    print(json.dumps(locations.as_json(value), indent=2))


@app.command("list")
def list_locations(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every location: site, type, storage, priority (lower is preferred), operations and queues."""
    rows = locations.list_locations(ctx.obj)
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "site", "type", "storage", "where", "priority", "active", "task queues")
    for r in rows:
        active = "yes" if r.active else "no"
        queues = "\n".join(r.queues)
        table.add_row(r.name, r.site, r.type, r.storage, r.where, str(r.priority), active, queues)
    console.print(table)


@app.command("add")
def add_location(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Location name (part of its task queues' names).")],
    site: Annotated[str, typer.Option(help="Site that hosts it (created if new).")],
    type: Annotated[LocationType, typer.Option("--type", help="What it is for (its row of the matrix).")],
    storage: Annotated[StorageType, typer.Option(help="How its bytes are reached.")],
    path: Annotated[str | None, typer.Option(help="DISK, TAPE: its mount point.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="S3: endpoint URL; SERVICE: the service URL.")] = None,
    bucket: Annotated[str | None, typer.Option(help="S3: the bucket.")] = None,
    prefix: Annotated[str, typer.Option(help="S3: key prefix inside the bucket.")] = "",
    priority: Annotated[int, typer.Option(help="Lower is preferred among active locations of a type.")] = 0,
    active: Annotated[bool, typer.Option(help="Inactive locations get no new work.")] = True,
    operation: Annotated[
        list[Operation] | None,
        typer.Option("--operation", help="Serve only these (repeatable; default: all of its type's)."),
    ] = None,
    short_name: Annotated[
        str | None,
        typer.Option(help="The site's short name, starting its queue names (default: from --site)."),
    ] = None,
) -> None:
    """Create or replace a location: every field gets the value given or its default."""
    new = locations.NewLocation(
        name=name, site=site, type=type.value, storage=storage.value, path=path, endpoint=endpoint,
        bucket=bucket, prefix=prefix, priority=priority, active=active,
        operations=tuple(op.value for op in operation or ()), short_name=short_name,
    )  # fmt: skip
    try:
        queues = locations.add_location(ctx.obj, new)
    except InvalidName as err:
        raise typer.BadParameter(str(err)) from err
    console.print(f"location {name} ({type.value}, {storage.value}) serves {', '.join(queues)}")


@app.command("queues")
def list_queues(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every task queue, from the database: location, site and operation of each."""
    rows = locations.queues(ctx.obj)
    if as_json:
        _print_json(rows)
        return
    table = Table("task queue", "location", "site", "operation")
    for r in rows:
        table.add_row(r.queue, r.location or "-", r.site or "-", r.operation or _no_operation(r))
    console.print(table)


def _no_operation(row: locations.QueueRow) -> str:
    return "(legacy: all it serves)" if row.location else "(workflows)"


@app.command("health")
def health(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Each queue's pollers and when Temporal last saw them poll (DescribeTaskQueue)."""
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj

    async def main() -> list[locations.QueueHealth]:
        return await locations.health(await connect(settings), settings)

    rows = asyncio.run(main())
    if as_json:
        _print_json(rows)
        return
    table = Table("task queue", "location", "operation", "pollers", "last access (UTC)")
    for h in rows:
        r = h.queue
        seen = [p.last_access for p in h.pollers if p.last_access]
        who = "\n".join(f"{p.identity} ({p.task_type})" for p in h.pollers) or "[red]none[/red]"
        last = max(seen).strftime("%Y-%m-%d %H:%M:%S") if seen else "-"
        table.add_row(r.queue, r.location or "-", r.operation or _no_operation(r), who, last)
    console.print(table)
