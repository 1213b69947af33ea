"""Arrival workflows from outside: signal-with-start one per exposure, and the sweep that
finds objects no notification announced.

Used by ``unembargo listen`` (each notification), ``unembargo arrivals sweep`` and the
sweep schedule's activity: one way to reach an arrival, so ids, input and reuse rules
are the same whoever signals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from unembargo.models import arrival
from unembargo.models.arrival import ArrivalInput, ArrivalPolicy, ListenSettings, ObjectEvent, SweepResult
from unembargo.models.exposure import STEPS
from unembargo.models.names import exposure_search_attributes
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, step_queues


def arrival_queue(settings: Settings) -> str:
    """Task queue of the arrival activities: the best active location of their kind."""
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    for step, spec in STEPS.items():
        if spec.location == arrival.ARRIVAL_LOCATION:
            return queues[step]
    raise LookupError(f"no exposure step runs on a {arrival.ARRIVAL_LOCATION!r} location")


def arrival_policy(settings: Settings) -> ArrivalPolicy:
    """The arrival policy the settings ask for (incomplete_wait, heartbeat_timeout, UNEMBARGO_ARRIVAL_*)."""
    listen = ListenSettings()
    return ArrivalPolicy(
        batch_size=listen.arrival_batch_size,
        retry_s=listen.arrival_retry_s,
        incomplete_wait_s=settings.incomplete_wait.total_seconds(),
        heartbeat_s=settings.heartbeat_timeout.total_seconds(),
    )


async def signal_arrival(
    client: Client,
    settings: Settings,
    queue: str,
    policy: ArrivalPolicy,
    ev: ObjectEvent,
    signal: str = arrival.OBJECT_SIGNAL,
) -> str:
    """Signal-with-start the exposure's arrival workflow; returns once Temporal has it."""
    args: Sequence[object] = [ev] if signal == arrival.OBJECT_SIGNAL else []
    try:
        await client.start_workflow(
            arrival.ARRIVAL_WORKFLOW,
            ArrivalInput(ev.instrument, ev.day_obs, ev.obs_id, queue, policy),
            id=arrival.arrival_workflow_id(ev.instrument, ev.obs_id),
            task_queue=settings.workflow_task_queue,
            start_signal=signal,
            start_signal_args=args,
            # A run that failed (reported incomplete) is followed by a new one when more
            # files come; a completed one is never started again.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=exposure_search_attributes(
                ev.instrument, ev.day_obs, ev.obs_id, arrival.ARRIVING
            ),
        )
    except WorkflowAlreadyStartedError:
        return "closed"
    return "signalled"


async def sweep(
    client: Client,
    settings: Settings,
    listing: Mapping[tuple[str, int, str], Sequence[str]],
    queue: str | None = None,
) -> SweepResult:
    """Signal every listed object that its exposure's arrival has not seen.

    ``listing``: (instrument, day_obs, obs_id) -> object names of its folder. An exposure
    with no arrival, or whose last run failed, gets a new run (which lists its folder
    itself); a running one gets one signal per unseen object; a completed one nothing.
    """
    queue = queue or arrival_queue(settings)
    policy = arrival_policy(settings)
    counts: Counter[str] = Counter()
    signalled = 0
    for (instrument, day_obs, obs_id), names in sorted(listing.items()):
        if not names:
            continue
        handle = client.get_workflow_handle(arrival.arrival_workflow_id(instrument, obs_id))
        try:
            status = (await handle.describe()).status
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            status = None
        first = ObjectEvent(instrument, day_obs, obs_id, sorted(names)[0])
        if status == WorkflowExecutionStatus.COMPLETED:
            counts["complete"] += 1
            continue
        if status != WorkflowExecutionStatus.RUNNING:
            # None, failed, terminated, timed out: a new run lists the whole folder.
            await signal_arrival(client, settings, queue, policy, first)
            counts["started" if status is None else "restarted"] += 1
            signalled += 1
            continue
        seen = set(await handle.query(arrival.SEEN_QUERY, result_type=list[str]))
        unseen = [n for n in names if n not in seen]
        for name in unseen:
            await handle.signal(arrival.OBJECT_SIGNAL, ObjectEvent(instrument, day_obs, obs_id, name))
        signalled += len(unseen)
        counts["caught up" if unseen else "up to date"] += 1
    return SweepResult(exposures=sum(counts.values()), signalled=signalled, by_state=dict(counts))
