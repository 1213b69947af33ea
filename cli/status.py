"""``unembargo status`` and ``unembargo retry``: where an exposure is, and moving it on."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Coroutine
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.client.status import ExposureStatus, NoWorkflow, PendingStep
from unembargo.engine.codec import PayloadKeyError
from unembargo.models import names
from unembargo.models.reconcile import ARRIVAL_STARTED, NOT_ARRIVED, ArrivalRun, WorkflowRun
from unembargo.models.settings import Settings

console = Console()
T = TypeVar("T")
_STYLE = {"completed": "green", "failed": "red", "running": "yellow"}
# An exposure whose unembargo workflow does not exist yet (its arrival does).
NOT_STARTED = "not-started"
Instrument = Annotated[str, typer.Option(help="Instrument name.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def status(
    ctx: typer.Context,
    obs_id: Annotated[str | None, typer.Argument(help="The exposure's obs_id.")] = None,
    day: Annotated[int | None, typer.Option(help="Every exposure of this day_obs (YYYYMMDD).")] = None,
    instrument: Instrument = "LSSTCam",
    as_json: AsJson = False,
) -> None:
    """Step timeline of an exposure (OBS_ID), or one line per exposure of a day (--day).

    For a running exposure: its current activity, attempt and last failure. Each also shows
    its arrival workflow's state: arriving, embargoed (until when), incomplete (how many
    sensors are missing), started, or not-yet-arrived.
    """
    settings: Settings = ctx.obj
    if obs_id is not None and day is None:
        _show_exposure(settings, instrument, obs_id, as_json)
    elif day is not None and obs_id is None:
        try:
            day_obs = names.check_day_obs(day)
        except names.InvalidName as err:
            raise typer.BadParameter(str(err), param_hint="--day") from err
        # Embargoed arrivals' ends come from the embargo butler; on the local stack its keys are dummies.
        use_loopback_credentials(settings.s3_endpoint_url)
        _print_day(*_ask(_day(settings, instrument, day_obs)), day_obs, as_json)
    else:
        raise typer.BadParameter("give an OBS_ID or --day, not both")


def _ask(request: Coroutine[Any, Any, T]) -> T:
    """Run one request to Temporal; exit 1 saying why if there is no such workflow or its
    payloads cannot be read with the configured key."""
    try:
        return asyncio.run(request)
    except NoWorkflow as err:
        console.print(str(err))
        raise typer.Exit(1) from err
    except PayloadKeyError as err:
        console.print(f"[red]PayloadKeyError[/red]: {err}", soft_wrap=True)
        raise typer.Exit(1) from None


def _checked_exposure(instrument: str, obs_id: str) -> None:
    """A usage error (exit 2) for an instrument or obs_id that cannot name a workflow."""
    try:
        names.workflow_id(instrument, obs_id)
    except names.InvalidName as err:
        raise typer.BadParameter(str(err)) from err


def _show_exposure(settings: Settings, instrument: str, obs_id: str, as_json: bool) -> None:
    _checked_exposure(instrument, obs_id)
    found, arrival = _ask(_one(settings, instrument, obs_id))
    if as_json:
        out = found.as_dict() if found else {"workflow_id": names.workflow_id(instrument, obs_id),
                                             "status": NOT_STARTED, "step": "-"}  # fmt: skip
        print(_json({**out, "arrival": asdict(arrival)}))
        return
    if found is not None:
        _print_one(settings, found)
    else:
        console.print(f"[bold]{names.workflow_id(instrument, obs_id)}[/bold]  not started yet")
    console.print(f"  arrival ({arrival.workflow_id}): {arrival.state}: {arrival.describe()}", soft_wrap=True)


async def _one(settings: Settings, instrument: str, obs_id: str) -> tuple[ExposureStatus | None, ArrivalRun]:
    """The exposure's unembargo workflow (None if not started yet, while it arrives) and its
    arrival; NoWorkflow when neither exists."""
    from unembargo.client.status import arrival_status, exposure_status
    from unembargo.engine.connection import connect

    client = await connect(settings)
    arrival = await arrival_status(client, instrument, obs_id)
    try:
        return await exposure_status(client, instrument, obs_id), arrival
    except NoWorkflow:
        if arrival.state == NOT_ARRIVED:
            raise
        return None, arrival


async def _day(
    settings: Settings, instrument: str, day_obs: int
) -> tuple[dict[str, WorkflowRun], dict[str, ArrivalRun]]:
    """The day's unembargo runs and its arrivals (one visibility query each)."""
    from unembargo.client.progress import day_runs
    from unembargo.client.status import day_arrivals_with_ends
    from unembargo.engine.connection import connect

    client = await connect(settings)
    runs, arrivals = await asyncio.gather(
        day_runs(client, instrument, day_obs), day_arrivals_with_ends(client, settings, instrument, day_obs)
    )
    return runs, arrivals


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "-"


def _short(at: datetime | None) -> str:
    """Table cells: UTC to the second, without the year."""
    return at.strftime("%m-%d %H:%M:%S") if at else "-"


def _json(value: object) -> str:
    return json.dumps(value, indent=2, default=lambda o: o.isoformat() if isinstance(o, datetime) else str(o))


def _styled(status: str) -> str:
    style = _STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def _print_one(settings: Settings, found: ExposureStatus) -> None:
    where = "failed at" if found.status == "failed" else "step"
    console.print(f"[bold]{found.workflow_id}[/bold]  {_styled(found.status)}  {where} {found.step}")
    console.print(f"  run {found.run_id}, started {_when(found.started)}, closed {_when(found.closed)}")
    if found.error:
        console.print(f"  [red]{found.error_type or 'error'}[/red]: {found.error}")
    console.print(_timeline(found))
    if found.pending:
        _print_pending(found.pending)
    if found.waiting_for:
        console.print(f"  waiting for raws: {found.waiting_for}")
    if found.stuck or found.status in ("failed", "terminated", "timed_out", "canceled"):
        console.print(f"  once the cause is fixed: unembargo retry {found.workflow_id.rsplit('-', 1)[-1]}")
    console.print(
        f"  history: {settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{found.workflow_id}/{found.run_id}/history",
        soft_wrap=True,
    )


def _timeline(found: ExposureStatus) -> Table:
    table = Table("step", "done", "when (UTC)", "tries", Column("receipt / last failure", overflow="fold"))
    for step in found.steps:
        detail = step.summary if step.done else (step.last_failure or "")
        done = "yes" if step.done else "-"
        table.add_row(step.step, done, _short(step.when), str(step.attempts or "-"), detail)
    return table


def _print_pending(pending: PendingStep) -> None:
    next_try = f", next attempt {_when(pending.next_attempt)}" if pending.next_attempt else ""
    console.print(f"  now: {pending.activity}, attempt {pending.attempt}, {pending.state}{next_try}")
    if pending.last_failure:
        console.print(f"  last failure: [red]{pending.last_failure}[/red]")


def _brief(text: str, limit: int = 90) -> str:
    """A day's table shows the start of each problem; `status OBS_ID` shows all of it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_day(
    runs: dict[str, WorkflowRun], arrivals: dict[str, ArrivalRun], day_obs: int, as_json: bool
) -> None:
    """One row per exposure with an unembargo or an arrival workflow; an arrival column
    when the day has any arrival workflow."""
    obs_ids = sorted(set(runs) | set(arrivals))
    if as_json:
        print(_json({obs: _day_entry(runs.get(obs), arrivals.get(obs)) for obs in obs_ids}))
        return
    columns = [
        Column("obs_id", no_wrap=True),
        Column("status", no_wrap=True),
        Column("step (try)", no_wrap=True),
    ]
    if arrivals:
        columns.append(Column("arrival", no_wrap=True))
    table = Table(*columns, Column("problem", overflow="fold"))
    for obs_id in obs_ids:
        run, arrival = runs.get(obs_id), arrivals.get(obs_id)
        status = _styled(run.status) if run else NOT_STARTED
        step = "-" if run is None else f"{run.step} ({run.attempt})" if run.attempt else run.step
        problem = (run.error or run.last_failure or "") if run else ""
        if not problem and arrival is not None and arrival.state != ARRIVAL_STARTED:
            # Arriving, embargoed until when, incomplete by how many sensors.
            problem = arrival.describe(day_obs)
        shown = [arrival.state if arrival else NOT_ARRIVED] if arrivals else []
        table.add_row(obs_id, status, step, *shown, _brief(problem))
    counts = Counter(r.status for r in runs.values())
    counts.update(f"arrival {a.state}" for a in arrivals.values() if a.state != ARRIVAL_STARTED)
    table.caption = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(table)


def _day_entry(run: WorkflowRun | None, arrival: ArrivalRun | None) -> dict[str, Any]:
    out = asdict(run) if run else {"workflow_id": None, "status": NOT_STARTED, "step": "-"}
    return {**out, "arrival": asdict(arrival) if arrival else None}


def retry(
    ctx: typer.Context,
    obs_id: Annotated[str, typer.Argument(help="The exposure's obs_id.")],
    instrument: Instrument = "LSSTCam",
    reason: Annotated[str, typer.Option(help="Recorded in the workflow history.")] = "unembargo retry",
    as_json: AsJson = False,
) -> None:
    """Run a failed exposure again, or reset a stuck one to the step that is failing.

    Steps already done are kept. Exit code 0 if a run was started or reset, 1 if
    there was nothing to retry (the reason is printed).
    """
    settings: Settings = ctx.obj
    _checked_exposure(instrument, obs_id)
    outcome = _ask(_retry(settings, instrument, obs_id, reason))
    if as_json:
        print(json.dumps(asdict(outcome), indent=2))
    else:
        console.print(f"{outcome.workflow_id}: {outcome.action}: {outcome.message}")
    raise typer.Exit(0 if outcome.action != "none" else 1)


async def _retry(settings: Settings, instrument: str, obs_id: str, reason: str) -> Any:
    from unembargo.client.retry import retry_exposure
    from unembargo.engine.connection import connect

    return await retry_exposure(await connect(settings), settings, instrument, obs_id, reason)
