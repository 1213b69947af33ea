"""The carousel flow's use-cases: stage a dataset, a request's state, an operator's decision.

``stage`` is a signal-with-start: the first request for a dataset starts its workflow
(``carousel-<scope>-<name>``); a second one for the same dataset joins the running workflow
(its ``requests`` counter grows) instead of making a second rule or a second message per file.
A request from a throttled tape (``UNEMBARGO_CAROUSEL_THROTTLES``) first makes sure the tape's
throttle workflow runs, by a signal-with-start that also hands it the current limits.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlmodel import Session
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from unembargo.models.carousel import (
    CAROUSEL_WORKFLOW,
    DECIDE_SIGNAL,
    REQUEST_SIGNAL,
    STEPS,
    CarouselInput,
    CarouselPolicy,
    CarouselRequest,
    CarouselSettings,
    CarouselState,
    Decision,
    Status,
    Step,
    request_workflow_id,
)
from unembargo.models.carousel_throttle import (
    LIMITS_SIGNAL,
    THROTTLE_WORKFLOW,
    ThrottleInput,
    ThrottleLimits,
    ThrottleLoad,
    ThrottleState,
    load_of,
    throttle_workflow_id,
)
from unembargo.models.locations import Operation, get_location, operation_queues
from unembargo.models.names import SA_CAROUSEL_STATUS, SA_STEP
from unembargo.models.settings import Settings

STARTING = TypedSearchAttributes(
    [
        SearchAttributePair(SA_CAROUSEL_STATUS, Status.TRANSFORMING.value),
        SearchAttributePair(SA_STEP, Step.RULE.value),
    ]
)


def route(session: Session, config: CarouselSettings) -> dict[str, str]:
    """Step -> the queue of its operation at the carousel's location (the location table's)."""
    loc = get_location(session, config.location)
    served = operation_queues(session, loc)
    queues = {}
    for step, spec in STEPS.items():
        op = Operation(spec.location)
        if op not in served:
            raise ValueError(f"location {loc.name!r} does not serve {op.value}, which step {step} needs")
        queues[step.value] = served[op]
    return queues


async def stage(
    client: Client,
    settings: Settings,
    queues: dict[str, str],
    request: CarouselRequest,
    policy: CarouselPolicy | None = None,
    config: CarouselSettings | None = None,
) -> WorkflowHandle[object, CarouselState]:
    """Start the dataset's workflow, or join the running one; its handle."""
    limits = (config or CarouselSettings()).throttles.get(request.src_rse)
    throttle = None
    if limits is not None and request.rule_id is None:
        throttle = (await start_throttle(client, settings.workflow_task_queue, request.src_rse, limits)).id
    return await client.start_workflow(
        CAROUSEL_WORKFLOW,
        CarouselInput(request, queues, policy or CarouselPolicy(), throttle=throttle),
        id=request_workflow_id(request.scope, request.name),
        task_queue=settings.workflow_task_queue,
        result_type=CarouselState,
        start_signal=REQUEST_SIGNAL,
        start_signal_args=[request],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=STARTING,
    )


async def start_throttle(
    client: Client, task_queue: str, rse: str, limits: ThrottleLimits, rounds: int | None = None
) -> WorkflowHandle[object, None]:
    """The tape's throttle, started if it is not running, with these limits."""
    inp = ThrottleInput(rse, limits) if rounds is None else ThrottleInput(rse, limits, rounds)
    return await client.start_workflow(
        THROTTLE_WORKFLOW,
        inp,
        id=throttle_workflow_id(rse),
        task_queue=task_queue,
        start_signal=LIMITS_SIGNAL,
        start_signal_args=[limits],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )


async def throttle_state(client: Client, rse: str) -> ThrottleState:
    """A tape's asks, grants and the most files it had staging at once."""
    handle = client.get_workflow_handle(throttle_workflow_id(rse))
    return await handle.query("state", result_type=ThrottleState)


async def throttle_loads(client: Client, tapes: Mapping[str, ThrottleLimits]) -> list[ThrottleLoad]:
    """Each tape's files staging, queued and waiting outside against its limits (the running
    throttle's own limits; a tape whose throttle never started shows the limits given)."""
    loads = []
    for rse, limits in tapes.items():
        try:
            loads.append(load_of(await throttle_state(client, rse)))
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            loads.append(ThrottleLoad(rse, False, limits.staging, limits.queued))
    return loads


async def state(client: Client, scope: str, name: str) -> CarouselState:
    """The request's counters, statuses and evidence (its ``state`` query)."""
    handle = client.get_workflow_handle(request_workflow_id(scope, name))
    return await handle.query("state", result_type=CarouselState)


async def decide(client: Client, scope: str, name: str, decision: Decision) -> None:
    """An operator's decision for a request waiting for one."""
    await client.get_workflow_handle(request_workflow_id(scope, name)).signal(DECIDE_SIGNAL, decision)
