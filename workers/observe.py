"""Each activity attempt as a span of its exposure's trace, and its log lines tagged.

The span nests under the workflow's step span (the OpenTelemetry plugin carries the
context in the activity's headers) and carries instrument, day_obs, obs_id, step and
the attempt number; every log line of the attempt names the obs_id and step.

A failed attempt is reported to Temporal as its error's type and message only. The
server keeps a pending activity's last failure only while it is small (a few KB) and
shows "Failure exceeds size limit." instead, so a deep library traceback (botocore,
urllib3) would hide the reason from the UI; the full traceback goes to the worker log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from temporalio import activity
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from unembargo.engine.telemetry import log_fields
from unembargo.models import names
from unembargo.models.exposure import STEP_OF_ACTIVITY

# Longest error message reported to Temporal; the rest is in the worker log.
MESSAGE_LIMIT = 1500


class ActivityObserver(Interceptor):
    """Worker interceptor: a span and log fields per activity attempt."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Observed(next)


def attempt_attributes(args: Sequence[Any], activity_type: str) -> dict[str, str | int]:
    """The exposure and step of a step activity's input; empty for other activities."""
    exposure = getattr(args[0], "exposure", None) if args else None
    step = STEP_OF_ACTIVITY.get(activity_type)
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
            try:
                return await super().execute_activity(input)
            except FailureError:
                raise  # already Temporal's own (cancellation, an explicit ApplicationError)
            except Exception as err:
                activity.logger.warning("attempt %d failed", info.attempt, exc_info=err)
                raise short_failure(err) from None


def short_failure(err: Exception) -> ApplicationError:
    """``err`` as a failure of the same type name (retry policies match on it) and message,
    without its traceback chain."""
    message = str(err)
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT] + " [cut; the worker log has the rest]"
    return ApplicationError(message, type=err.__class__.__name__)
