"""``unembargo listen`` and ``unembargo arrivals``: the first half of the embargo dataflow."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console

from unembargo.models import names
from unembargo.models.arrival import ListenSettings, secret_file
from unembargo.models.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Arrivals: ingest raws as their notifications come.")
console = Console()
Instrument = Annotated[str, typer.Option(help="Instrument name.")]


def listen(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port (default: UNEMBARGO_LISTEN_PORT or 8090).")] = None,
) -> None:
    """Serve POST /notify for bucket notifications (host: UNEMBARGO_LISTEN_HOST, loopback by default).

    The shared secret comes from UNEMBARGO_NOTIFY_SECRET or the file UNEMBARGO_NOTIFY_SECRET_FILE
    (default <state_dir>/notify-secret), never from the command line.
    """
    from unembargo.client.listen import serve
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj
    listen_settings = ListenSettings()
    if port is not None:
        listen_settings.listen_port = port
    secret = listen_settings.secret(default_file=secret_file(settings.state_dir))
    if not secret:
        raise typer.BadParameter(
            "no notification secret: set UNEMBARGO_NOTIFY_SECRET or UNEMBARGO_NOTIFY_SECRET_FILE"
        )

    async def main() -> None:
        await serve(await connect(settings, wait=True), settings, listen_settings, secret)

    asyncio.run(main())


@app.command()
def sweep(
    ctx: typer.Context,
    day: Annotated[int, typer.Option(help="day_obs (YYYYMMDD) whose folders to sweep.")],
    instrument: Instrument = "LSSTCam",
) -> None:
    """List the day's folders and signal every object no arrival has seen."""
    from unembargo.client.arrivals import sweep_day
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj
    day_obs = names.check_day_obs(day)

    async def main() -> None:
        result = await sweep_day(await connect(settings), settings, instrument, day_obs)
        console.print(json.dumps(asdict(result)))

    asyncio.run(main())


@app.command()
def status(
    ctx: typer.Context,
    obs_id: Annotated[str, typer.Argument(help="The exposure's obs_id.")],
    instrument: Instrument = "LSSTCam",
) -> None:
    """An arrival's state: files seen, ingested, failed (with why), missing sensors."""
    from unembargo.client.arrivals import arrival_state
    from unembargo.engine.connection import connect

    settings: Settings = ctx.obj

    async def main() -> None:
        state = await arrival_state(await connect(settings), instrument, names.check_name("obs_id", obs_id))
        console.print_json(json.dumps(asdict(state)))

    asyncio.run(main())


@app.command()
def schedule(
    ctx: typer.Context,
    every: Annotated[str, typer.Option(help="How often to sweep today and yesterday (e.g. 15m).")] = "15m",
    instrument: Instrument = "LSSTCam",
) -> None:
    """Create (or update) the Temporal Schedule that sweeps for lost notifications."""
    from unembargo.client.arrivals import create_sweep_schedule
    from unembargo.engine.connection import connect
    from unembargo.models.settings import parse_duration

    settings: Settings = ctx.obj
    try:
        period = parse_duration(every)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    async def main() -> str:
        return await create_sweep_schedule(await connect(settings), settings, instrument, period)

    console.print(f"{asyncio.run(main())} schedule arrival-sweep-{instrument} (every {every})")
