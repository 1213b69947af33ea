"""The ``unembargo`` command.

unembargo dev up              # local stack: Temporal + UI, S3, PostgreSQL, Rucio
unembargo dev seed            # synthetic LSSTCam exposures in the embargo bucket and butler
unembargo start --window 80h  # one durable workflow per exposure past its embargo
unembargo schedule create     # ... every 15 minutes, as a Temporal Schedule
unembargo status OBS_ID       # an exposure's step timeline; `retry OBS_ID` moves it on
unembargo listen              # POST /notify: bucket notifications -> arrival workflows
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from unembargo.cli import (
    arrivals,
    carousel,
    ccat,
    dev,
    fits,
    locations,
    rawintegrity,
    reconcile,
    schedule,
    start,
    status,
    web,
    workers,
)
from unembargo.engine.errors import SourceUnavailable, TemporalUnreachable
from unembargo.models.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Move raw exposures out of embargo, durably.")
app.add_typer(dev.app, name="dev")
app.add_typer(locations.app, name="locations")
app.command()(start.start)
app.command()(workers.worker)
app.command()(reconcile.reconcile)
app.add_typer(schedule.app, name="schedule")
app.command()(status.status)
app.command()(status.retry)
app.command()(arrivals.listen)
app.add_typer(arrivals.app, name="arrivals")
app.add_typer(ccat.app, name="ccat")
app.add_typer(fits.app, name="fits")
app.add_typer(rawintegrity.app, name="rawintegrity")
app.add_typer(carousel.app, name="carousel")
app.command()(web.web)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Load settings once (environment, then UNEMBARGO_CONFIG / unembargo.toml)."""
    from unembargo.engine.telemetry import setup_logging

    # Every line names its exposure and step ("-" outside an activity).
    setup_logging(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = Settings()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
        code: int | str | None = 0
    except SystemExit as done:
        code = done.code
    except (SourceUnavailable, TemporalUnreachable) as err:
        # What the command needs is not there: say which, with no traceback (--verbose: logged).
        logging.getLogger(__name__).debug("stopped", exc_info=err)
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        if isinstance(err, TemporalUnreachable):
            print("(`unembargo dev up` starts the local stack's Temporal)", file=sys.stderr)
        code = 2
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    # Leave without interpreter teardown: a Temporal client's Rust threads can abort it
    # ("Fatal Python error: PyGILState_Release", temporalio/sdk-python#300), turning a
    # command that did all its work (say `dev up`, whose worker check uses a client) into
    # exit status -6. Nothing is left to run by then: flush what is buffered and go.
    from unembargo.engine.telemetry import flush

    flush()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
