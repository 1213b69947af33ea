"""The one way unembargo connects to Temporal."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin
from temporalio.service import RPCError, RPCStatusCode

from unembargo.engine.codec import data_converter
from unembargo.engine.errors import TemporalUnreachable
from unembargo.engine.telemetry import configure_tracing
from unembargo.models.settings import Settings

log = logging.getLogger(__name__)

# Waiting workers try again after 1, 2, 4 ... seconds, never more than this apart.
MAX_RETRY_SECONDS = 30.0


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


async def _connect(settings: Settings) -> Client:
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=data_converter(settings.payload_key_file),
            plugins=[OpenTelemetryPlugin()],
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
