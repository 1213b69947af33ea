"""Each activity attempt as a span of its exposure's trace, and its log lines tagged.

The span nests under the workflow's step span (the OpenTelemetry plugin carries the
context in the activity's headers) and carries instrument, day_obs, obs_id, step and
the attempt number; every log line of the attempt names the obs_id and step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from unembargo.client.telemetry import log_fields
from unembargo.models import names


class ActivityObserver(Interceptor):
    """Worker interceptor: a span and log fields per activity attempt."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Observed(next)


def attempt_attributes(args: Sequence[Any], activity_type: str) -> dict[str, str | int]:
    """The exposure and step of a step activity's input; empty for other activities."""
    exposure = getattr(args[0], "exposure", None) if args else None
    step = names.STEP_OF_ACTIVITY.get(activity_type)
    if exposure is None:
        return {}
    return names.exposure_attributes(exposure.instrument, exposure.day_obs, exposure.obs_id, step)


class _Observed(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        fields = attempt_attributes(input.args, info.activity_type)
        attributes = {**fields, "attempt": info.attempt, "workflow_id": info.workflow_id or ""}
        span = trace.get_tracer(__name__).start_as_current_span(
            f"activity:{info.activity_type}", attributes=attributes
        )
        with log_fields(fields), span:
            return await super().execute_activity(input)
