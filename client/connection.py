"""The one way unembargo connects to Temporal."""

from __future__ import annotations

from temporalio.client import Client

from unembargo.models.settings import Settings


async def connect(settings: Settings) -> Client:
    """Client for the configured Temporal frontend and namespace."""
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
