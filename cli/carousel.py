"""``unembargo carousel``: stage datasets from tape, file by file (stage, status, decide,
throttle-status)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from unembargo.models.carousel import (
    CHANGE,
    DECISIONS,
    CarouselRequest,
    CarouselSettings,
    CarouselState,
    Decision,
)
from unembargo.models.carousel_throttle import ThrottleLimits, ThrottleLoad
from unembargo.models.settings import Settings, parse_duration

app = typer.Typer(no_args_is_help=True, help="Tape carousel: stage a dataset, one message per file on disk")
console = Console()
Scope = Annotated[str, typer.Option("--scope", help="The dataset's Rucio scope.")]
Name = Annotated[str, typer.Option("--name", help="The dataset's Rucio name.")]


@app.command()
def stage(
    ctx: typer.Context,
    scope: Scope,
    name: Name,
    src_rse: Annotated[str, typer.Option("--src-rse", help="The tape RSE to stage from.")],
    dest_rse: Annotated[str, typer.Option("--dest-rse", help="The disk RSE to stage to.")],
    rule_id: Annotated[str | None, typer.Option("--rule-id", help="Adopt this rule.")] = None,
    max_wait: Annotated[str, typer.Option("--max-wait", help="A file not staged by then is stuck.")] = "3d",
    priority: Annotated[int, typer.Option("--priority")] = 0,
    lifetime: Annotated[str | None, typer.Option("--lifetime", help="Of a rule made (refreshed).")] = None,
) -> None:
    """Start the dataset's request (a second one for the same dataset joins the first)."""
    from unembargo.client.carousel import route
    from unembargo.client.carousel import stage as start
    from unembargo.engine.connection import connect
    from unembargo.models.tables import connect as db

    settings: Settings = ctx.obj
    request = CarouselRequest(
        scope, name, src_rse, dest_rse, rule_id, parse_duration(max_wait).total_seconds(), priority,
        int(parse_duration(lifetime).total_seconds()) if lifetime else None,
    )  # fmt: skip
    with Session(db(settings.database_url.get_secret_value())) as session:
        queues = route(session, CarouselSettings())

    async def main() -> str:
        return (await start(await connect(settings), settings, queues, request)).id

    console.print(f"{asyncio.run(main())}: staging {scope}:{name} from {src_rse} to {dest_rse}")


@app.command()
def status(
    ctx: typer.Context, scope: Scope, name: Name, as_json: bool = typer.Option(False, "--json")
) -> None:
    """The request's statuses and counters, and what waits for an operator."""
    from unembargo.client.carousel import state
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj

    async def main() -> CarouselState:
        return await state(await connect(settings), scope, name)

    s = asyncio.run(main())
    if as_json:
        console.print_json(json.dumps(asdict(s)))
        return
    table = Table("transform", "in", "out", "in total", "in processed", "out total", "out processed")
    table.add_row(
        s.transform_status, s.in_status, s.out_status, str(s.in_total_files), str(s.in_processed_files),
        str(s.out_total_files), str(s.output_processed_files),
    )  # fmt: skip
    console.print(table)
    console.print(f"rules: {', '.join(s.rule_ids)}; sources tried: {', '.join(s.sources)}")
    if s.operator:
        console.print(f"[yellow]operator[/yellow] {s.operator}", soft_wrap=True)


@app.command("throttle-status")
def throttle_status(
    ctx: typer.Context,
    rse: Annotated[
        list[str] | None, typer.Option("--rse", help="This tape (repeatable); default: every one throttled.")
    ] = None,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each throttled tape's files staging and queued against its limits (its throttle's query)."""
    from unembargo.client.carousel import throttle_loads
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj
    configured = CarouselSettings().throttles
    tapes = {r: configured.get(r, ThrottleLimits()) for r in rse} if rse else dict(configured)

    async def main() -> list[ThrottleLoad]:
        return await throttle_loads(await connect(settings), tapes) if tapes else []

    loads = asyncio.run(main())
    if as_json:
        console.print_json(json.dumps([asdict(x) for x in loads]))
        return
    if not loads:
        console.print("no tape is throttled (UNEMBARGO_CAROUSEL_THROTTLES); name one with --rse")
        return
    table = Table("tape", "staging", "limit", "queued", "limit", "outside", "requests", "peak staging")
    for x in loads:
        if not x.running:
            table.add_row(x.rse, "not running", str(x.staging_limit), "", str(x.queued_limit), "", "", "")
            continue
        table.add_row(
            x.rse, str(x.staging), str(x.staging_limit), str(x.queued), str(x.queued_limit), str(x.outside),
            str(x.requests), str(x.peak_staging),
        )  # fmt: skip
    console.print(table)


@app.command()
def decide(
    ctx: typer.Context,
    scope: Scope,
    name: Name,
    action: Annotated[str, typer.Argument(help="retry, change or give_up.")],
    src_rse: Annotated[str | None, typer.Option("--src-rse", help="change: the new source.")] = None,
    dest_rse: Annotated[str | None, typer.Option("--dest-rse", help="change: the new destination.")] = None,
) -> None:
    """Tell a request waiting for an operator what to do."""
    from unembargo.client.carousel import decide as send
    from unembargo.engine.connection import connect

    if action not in DECISIONS:
        raise typer.BadParameter(f"use one of {', '.join(DECISIONS)}")
    if action == CHANGE and not (src_rse or dest_rse):
        raise typer.BadParameter("change needs --src-rse or --dest-rse")
    settings: Settings = ctx.obj

    async def main() -> None:
        await send(await connect(settings), scope, name, Decision(action, src_rse, dest_rse))

    asyncio.run(main())
    console.print(f"{scope}:{name}: {action}")
