"""The action of the arrivals sweep schedule: list recent days, signal what no arrival has seen.

One activity does it, on the location that reaches the embargo bucket; it signals through
engine/arrivals, so ids and reuse rules are those of `unembargo listen`.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from unembargo.models.arrival import SWEEP_ACTIVITY, SWEEP_WORKFLOW, SweepInput, SweepResult

# A sweep that cannot list (bucket or Temporal down) fails after a few tries and shows in
# the schedule's recent actions; the next run tries again.
SWEEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=1), maximum_attempts=5
)


@workflow.defn(name=SWEEP_WORKFLOW)
class ArrivalSweepWorkflow:
    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        return await workflow.execute_activity(
            SWEEP_ACTIVITY,
            inp,
            result_type=SweepResult,
            task_queue=inp.queue,
            # One listing per day and a describe per exposure: a minute for a full night.
            start_to_close_timeout=timedelta(minutes=15),
            retry_policy=SWEEP_RETRY,
        )
