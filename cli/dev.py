"""``unembargo dev``: the local stack (temporal-dev/) on loopback."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.devstack import stack
from unembargo.devstack import web as web_page
from unembargo.models.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Local stack: up, down, status, seed.")
console = Console()


@app.command()
def up(ctx: typer.Context) -> None:
    """Start whatever part of the local stack is not running (idempotent)."""
    settings: Settings = ctx.obj
    with console.status("bringing the local stack up..."):
        actions = stack.up(settings, on_step=lambda name, action: console.print(f"  {name:<9} {action}"))
    if all(action != "started" for action in actions.values()):
        console.print("everything already up; nothing changed")
    console.print(f"Temporal web UI: [link]{settings.temporal_ui_url}[/link]")
    console.print(f"Dataflow page: [link]{web_page.address(settings)}[/link]")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop exactly the services that `dev up` started (by recorded PIDs)."""
    settings: Settings = ctx.obj
    stopped = stack.down(settings)
    for name, did in stopped.items():
        console.print(f"  {name:<9} {'stopped' if did else 'not started by this stack'}")


@app.command()
def status(ctx: typer.Context) -> None:
    """Each service of the local stack: address, health, PID."""
    settings: Settings = ctx.obj
    rows = stack.status(settings)
    table = Table("service", "address", "health", "pid")
    for row in rows:
        health = f"[green]up[/green] ({row.detail})" if row.healthy else f"[red]down[/red] ({row.detail})"
        table.add_row(row.name, row.address, health, str(row.pid or "-"))
    console.print(table)
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


def _size(text: str) -> int:
    """'64KiB', '8MiB', '1000' as bytes."""
    units = {"kib": 1024, "mib": 1024**2, "kb": 1000, "mb": 1000**2, "b": 1}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered.removesuffix(suffix)) * factor)
    return int(lowered)


@app.command()
def seed(
    ctx: typer.Context,
    days: Annotated[
        str, typer.Option(help="Comma-separated day offsets before today (0 = today's day_obs).")
    ] = "4,1",
    per_day: Annotated[
        int, typer.Option(help="Exposures per day (the first two are a bias and a dark).")
    ] = 5,
    size: Annotated[
        str, typer.Option(help="Approximate size of each raw FITS file, e.g. 64KiB, 8MiB.")
    ] = "64KiB",
) -> None:
    """Write synthetic LSSTCam exposures to the embargo bucket and butler (idempotent)."""
    from unembargo.devstack.seed import seed as seed_days

    settings: Settings = ctx.obj
    use_loopback_credentials(settings.s3_endpoint_url)
    offsets = [int(d) for d in days.split(",") if d.strip()]
    with console.status(f"seeding {per_day} exposure(s) on each of {len(offsets)} day(s)..."):
        report = seed_days(settings, offsets, per_day, file_size=_size(size))
    due = [e for e in report.exposures if report.now - e.end > settings.embargo_period]
    hours = f"{settings.embargo_period.total_seconds() / 3600:g} h"
    table = Table("obs_id", "type", "ended (UTC)", "raws", "tracts", f"past {hours}")
    for exp in report.exposures:
        table.add_row(exp.obs_id, exp.observation_type, exp.end.strftime("%m-%d %H:%M"),
                      str(exp.raws + exp.guider_raws), str(len(exp.tracts)),
                      "yes" if exp in due else "no")  # fmt: skip
    console.print(table)
    console.print(
        f"seeded {len(report.exposures)} exposure(s) in {report.seconds:.1f}s; "
        f"{len(due)} ended more than {hours} ago"
    )
    _seed_arrivals(settings, file_size=_size(size))


def _seed_arrivals(settings: Settings, file_size: int) -> None:
    """Exposures that reach the embargo butler the production way: uploads, then notifications."""
    with console.status("uploading exposures and posting their bucket notifications..."):
        sent = stack.seed_arrivals(settings, file_size=file_size)
    if sent is None:
        console.print("notification endpoint not up: no exposures sent through `unembargo listen`")
        return
    for exp in sent:
        console.print(
            f"  {exp.obs_id} ({exp.observation_type}): {len(exp.names)} objects notified; "
            f"`unembargo arrivals status {exp.obs_id}`"
        )
