"""The action of ``unembargo schedule``: select the due exposures, start their workflows.

One activity does both, on the location that zips (it reads the embargo butler), with
the same selection and the same deterministic workflow ids as ``unembargo start``.
Starts refuse an id that exists, so overlapping or repeated runs never start an
exposure twice.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from unembargo.models import names
    from unembargo.models.schedule import SelectInput, SelectResult

# A run that cannot select (butler or database down) fails after a few tries and shows
# as failed in the schedule's recent actions; the next run tries again.
SELECT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=5,
)


@workflow.defn(name=names.SELECT_WORKFLOW)
class SelectAndStartWorkflow:
    @workflow.run
    async def run(self, inp: SelectInput) -> SelectResult:
        return await workflow.execute_activity(
            names.SELECT_ACTIVITY,
            inp,
            result_type=SelectResult,
            task_queue=inp.queue,
            # One butler query and a start per due exposure: seconds, even for a whole night.
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=SELECT_RETRY,
        )
