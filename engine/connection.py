"""The one way unembargo connects to Temporal."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import cache
from typing import TypeVar

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode

from unembargo.engine.codec import data_converter
from unembargo.engine.errors import TemporalUnreachable
from unembargo.engine.telemetry import configure_tracing
from unembargo.models.settings import Settings

log = logging.getLogger(__name__)

# Waiting workers try again after 1, 2, 4 ... seconds, never more than this apart.
MAX_RETRY_SECONDS = 30.0

# Statuses of a call to a frontend that does not answer now (stopped, restarting, the
# network cut). The SDK has retried such a call for about 10 s before it reaches us.
_UNANSWERED = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})

T = TypeVar("T")


async def connect(settings: Settings, wait: bool = False) -> Client:
    """Client for the configured Temporal frontend and namespace.

    The OpenTelemetry plugin carries trace context from client to workflow to
    activity; workers built on this client inherit it, and its data converter:
    with ``payload_key_file`` set, every payload and failure text is encrypted.
    A frontend that does not answer is TemporalUnreachable at once. With ``wait`` (a
    worker started before its server) it is tried again, with the namespace, until both
    answer: the SDK's worker exits if its first namespace check fails.
    """
    configure_tracing(settings)
    client: Client | None = None
    delay = 1.0
    while True:
        try:
            # Once connected, only the namespace is asked again: the client reconnects itself.
            client = client or await _connect(settings)
            if wait:
                await _describe_namespace(client, settings)
            return client
        except TemporalUnreachable as err:
            if not wait:
                raise
            log.warning("%s; trying again in %.0f s", err, delay)
        await asyncio.sleep(delay)
        delay = min(2 * delay, MAX_RETRY_SECONDS)


@cache
def _runtime() -> Runtime:
    """The SDK core, its log lines (a call retried while Temporal is down, ...) sent through
    Python logging to stderr: by default it prints them on stdout, in the middle of
    ``start --json``'s document."""
    forwarding = LogForwardingConfig(logger=logging.getLogger("temporalio.core"))
    logs = LoggingConfig(filter=LoggingConfig.default.filter, forwarding=forwarding)
    return Runtime(telemetry=TelemetryConfig(logging=logs))


async def _connect(settings: Settings) -> Client:
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=data_converter(settings.payload_key_file),
            plugins=[OpenTelemetryPlugin()],
            runtime=_runtime(),
        )
    except RuntimeError as err:
        text = str(err)
        if not text.startswith("Failed client connect"):
            raise
        # The core SDK's text is a nested Rust error; its OS message says what happened.
        found = re.search(r'message: "([^"]+)"', text)
        reason = found.group(1) if found else text.removeprefix("Failed client connect: ")
        raise TemporalUnreachable(f"cannot reach Temporal at {settings.temporal_address}: {reason}") from None


async def _describe_namespace(client: Client, settings: Settings) -> None:
    """TemporalUnreachable unless the frontend answers for the namespace now."""
    request = DescribeNamespaceRequest(namespace=settings.temporal_namespace)
    try:
        await client.workflow_service.describe_namespace(request, timeout=timedelta(seconds=10))
    except RPCError as err:
        address, namespace = settings.temporal_address, settings.temporal_namespace
        if err.status == RPCStatusCode.NOT_FOUND:
            raise TemporalUnreachable(f"Temporal at {address} has no namespace {namespace!r}") from None
        if err.status == RPCStatusCode.UNAVAILABLE:
            raise TemporalUnreachable(f"cannot reach Temporal at {address}: {err.message}") from None
        raise


def unanswered(err: BaseException) -> str | None:
    """Why Temporal did not answer, if ``err`` says it did not (else None: a real error)."""
    if isinstance(err, TemporalUnreachable):
        return str(err)
    if isinstance(err, RPCError) and err.status in _UNANSWERED:
        return err.message or err.status.name
    return None


async def riding_out(
    call: Callable[[], Awaitable[T]],
    limit: timedelta,
    on_retry: Callable[[str, float], None],
    address: str,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, called again while Temporal does not answer, after 1, 2, 4 ... s (at most
    MAX_RETRY_SECONDS apart); ``on_retry(reason, seconds)`` before each wait. After ``limit``
    without an answer: TemporalUnreachable. Any other error is raised as it is.

    Workflows run on the server whether or not anyone watches, so a watcher can wait for
    minutes; the client reconnects by itself once the frontend answers again.
    """
    delay = 1.0
    since: float | None = None
    while True:
        asked = clock()
        try:
            return await call()
        except Exception as err:
            reason = unanswered(err)
            if reason is None:
                raise
        now = clock()
        # From the start of the first call that went unanswered (the SDK's own retries in it).
        since = asked if since is None else since
        left = limit.total_seconds() - (now - since)
        if left <= 0:
            raise TemporalUnreachable(
                f"Temporal at {address} did not answer for {now - since:.0f} s ({reason}); "
                f"gave up after temporal_outage_limit {limit}. The workflows go on running on "
                "the server: `unembargo status` shows them once it answers"
            ) from None
        wait = min(delay, left)
        on_retry(reason, wait)
        await sleep(wait)
        delay = min(2 * delay, MAX_RETRY_SECONDS)
