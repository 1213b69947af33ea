"""The one way unembargo connects to Temporal."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin

from unembargo.client.codec import data_converter
from unembargo.client.telemetry import configure_tracing
from unembargo.models.settings import Settings


async def connect(settings: Settings) -> Client:
    """Client for the configured Temporal frontend and namespace.

    The OpenTelemetry plugin carries trace context from client to workflow to
    activity; workers built on this client inherit it, and its data converter:
    with ``payload_key_file`` set, every payload and failure text is encrypted.
    """
    configure_tracing(settings)
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings.payload_key_file),
        plugins=[OpenTelemetryPlugin()],
    )
