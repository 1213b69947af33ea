"""``unembargo worker``: serve the task queues of some locations (docs/locations.md)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from rich.console import Console
from sqlmodel import Session

from unembargo.models.locations import NoLocation, location_queues
from unembargo.models.settings import Settings
from unembargo.models.tables import connect

console = Console()


def worker(
    ctx: typer.Context,
    location: Annotated[
        list[str], typer.Option("--location", "-l", help="Serve this location's queues (repeatable).")
    ],
    workflows: Annotated[
        bool, typer.Option(help="Also run the workflows (their queue is location-free).")
    ] = True,
) -> None:
    """Serve the task queues of LOCATION(s) until interrupted."""
    from unembargo.engine.connection import connect as temporal_connect
    from unembargo.workers.worker import run

    settings: Settings = ctx.obj
    # A worker's log is its record of what it did: at least INFO (--verbose: DEBUG).
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))
    try:
        with Session(connect(settings.database_url.get_secret_value())) as session:
            queues = [q for name in location for q in location_queues(session, name)]
    except NoLocation as err:
        console.print(f"NoLocation: {err}", markup=False)
        raise typer.Exit(2) from err

    async def main() -> None:
        # Started before its Temporal server (a reboot, a stack coming up): wait for it.
        await run(await temporal_connect(settings, wait=True), settings, location, workflows)

    console.print(f"serving {', '.join(queues)}; Ctrl-C to stop", markup=False)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
