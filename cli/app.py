"""The ``unembargo`` command.

unembargo dev up              # local stack: Temporal + UI, S3, PostgreSQL, Rucio
unembargo dev seed            # synthetic LSSTCam exposures in the embargo bucket and butler
unembargo start --window 80h  # one durable workflow per exposure past its embargo
"""

from __future__ import annotations

from typing import Annotated

import typer

from unembargo.cli import dev, start, workers
from unembargo.models.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Move raw exposures out of embargo, durably.")
app.add_typer(dev.app, name="dev")
app.add_typer(workers.locations_app, name="locations")
app.command()(start.start)
app.command()(workers.worker)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Load settings once (environment, then UNEMBARGO_CONFIG / unembargo.toml)."""
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    ctx.obj = Settings()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
