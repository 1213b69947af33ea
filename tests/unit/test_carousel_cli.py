"""``unembargo carousel throttle-status`` on the time-skipping server: the real throttle workflow,
holding two requests' asks (stand-in request workflows that take its grants), read by the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from unembargo.cli.app import app
from unembargo.client.carousel import start_throttle, throttle_state
from unembargo.models.carousel_throttle import (
    ASK_SIGNAL,
    GRANT_SIGNAL,
    ThrottleAsk,
    ThrottleGrant,
    ThrottleLimits,
)
from unembargo.workflows.carousel_throttle import CarouselThrottleWorkflow


@workflow.defn(name="ThrottledRequest", sandboxed=False)
class ThrottledRequest:
    """Stands in for a carousel request: takes the throttle's grants and holds its place (it is
    never awaited: the time-skipping server would skip to its run's timeout)."""

    def __init__(self) -> None:
        self.granted = 0

    @workflow.signal(name=GRANT_SIGNAL)
    def grant(self, grant: ThrottleGrant) -> None:
        self.granted = grant.granted

    @workflow.query
    def total(self) -> int:
        return self.granted

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


async def test_throttle_status_shows_each_tapes_staging_queued_and_limits(
    env: WorkflowEnvironment, queue: str
) -> None:
    tape, idle = f"TAPE_{uuid.uuid4().hex[:6]}", f"IDLE_{uuid.uuid4().hex[:6]}"
    limits = ThrottleLimits(staging=2, queued=5)
    client = env.client
    async with Worker(client, task_queue=queue, workflows=[CarouselThrottleWorkflow, ThrottledRequest]):
        requests = [
            await client.start_workflow(
                ThrottledRequest.run, id=f"req-{n}-{uuid.uuid4().hex[:6]}", task_queue=queue
            )
            for n in ("a", "b")
        ]
        throttle = await start_throttle(client, queue, tape, limits)
        # a wants 3: admitted, granted 2 (the staging limit), 1 left queued; b wants 5: 1 + 5 is
        # more than 5 queued, so it waits outside the queue.
        for handle, wanted in zip(requests, (3, 5), strict=True):
            await throttle.signal(ASK_SIGNAL, ThrottleAsk(handle.id, 0, wanted, 0))

        async def granted() -> bool:
            state = await throttle_state(client, tape)
            return len(state.askers) == 2 and state.peak_staging == 2

        deadline = asyncio.get_running_loop().time() + 30
        while not await granted():
            assert asyncio.get_running_loop().time() < deadline, "the throttle never granted"
            await asyncio.sleep(0.1)
        assert await requests[0].query(ThrottledRequest.total) == 2
        cli_env = {
            "UNEMBARGO_TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "UNEMBARGO_TEMPORAL_NAMESPACE": client.namespace,
            "COLUMNS": "160",
            "UNEMBARGO_CAROUSEL_THROTTLES": json.dumps(
                {tape: {"staging": 2, "queued": 5}, idle: {"staging": 7}}
            ),
        }
        shown = await asyncio.to_thread(
            CliRunner().invoke, app, ["carousel", "throttle-status", "--json"], env=cli_env
        )
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output) == [
            {"rse": tape, "running": True, "staging_limit": 2, "queued_limit": 5, "staging": 2, "queued": 1,
             "outside": 5, "requests": 2, "peak_staging": 2},
            {"rse": idle, "running": False, "staging_limit": 7, "queued_limit": 10000, "staging": 0,
             "queued": 0, "outside": 0, "requests": 0, "peak_staging": 0},
        ]  # fmt: skip
        one = await asyncio.to_thread(
            CliRunner().invoke, app, ["carousel", "throttle-status", "--rse", tape], env=cli_env
        )
        assert one.exit_code == 0, one.output
        [row] = [line for line in one.output.splitlines() if tape in line]
        cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
        assert cells == [tape, "2", "2", "1", "5", "5", "2", "2"]  # staging/limit, queued/limit, outside ...
        assert idle not in one.output
