"""Tracing and log fields of one real exposure run (in-process worker, real stack).

One trace per exposure: the workflow's ``exposure`` span is its root, with a
``step:<name>`` child per step, and under each an ``activity:<type>`` span per
attempt. Every one carries instrument, day_obs and obs_id; log lines written
by an activity name the obs_id and step. (Exporter choice and OTLP posting: tests/unit/test_telemetry.py.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlmodel import Session
from temporalio.client import Client

from support import fresh_day, poll_until, seed_small
from unembargo.devstack.seed import SeededExposure
from unembargo.engine.connection import connect
from unembargo.engine.starter import start_exposures
from unembargo.engine.telemetry import ExposureFields, tracer_provider
from unembargo.models.exposure import STEPS, Exposure, Policy
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.tables import step_queues
from unembargo.workers.worker import build_workers


@pytest.fixture(scope="module")
def exported() -> InMemorySpanExporter:
    """Every span this process ends from now on."""
    exporter = InMemorySpanExporter()
    tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


class Records(logging.Handler):
    """Keeps the records of an activity logger, with the fields the CLI's format shows."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ExposureFields())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("temporalio.activity")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def traced_client(settings: Settings, locations: list[str]) -> AsyncIterator[Client]:
    """A client through ``connect`` (OpenTelemetry plugin) and in-process workers built on it."""
    client = await connect(settings.model_copy(update={"otel_exporter": "none"}))
    async with AsyncExitStack() as stack:
        for worker in build_workers(client, settings, locations):
            await stack.enter_async_context(worker)
        yield client


async def _run_one(settings: Settings, client: Client) -> SeededExposure:
    seeded = seed_small(settings, fresh_day(), 1)
    exposure = Exposure("LSSTCam", seeded.day_obs, seeded.obs_id, seeded.exposure_id)
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    [out] = await start_exposures(
        client, settings.workflow_task_queue, [exposure], queues, Policy(heartbeat_s=10)
    )
    await client.get_workflow_handle(out.workflow_id).result()
    return seeded


def _of(spans: list[ReadableSpan], obs_id: str) -> list[ReadableSpan]:
    return [s for s in spans if s.attributes and s.attributes.get("obs_id") == obs_id]


async def test_one_trace_per_exposure_with_a_span_per_step(
    settings: Settings, traced_client: Client, exported: InMemorySpanExporter, logged: Records
) -> None:
    """A real run through `connect` and `build_workers` makes one trace per exposure, a span per step and
    attempt, and activity log lines with obs_id and step."""
    seeded = await _run_one(settings, traced_client)
    await poll_until(
        lambda: any(s.name == "exposure" for s in _of(list(exported.get_finished_spans()), seeded.obs_id)),
        timeout=30,
        what="the exposure span to end",
    )
    spans = _of(list(exported.get_finished_spans()), seeded.obs_id)
    by_name = {s.name: s for s in spans}

    root = by_name["exposure"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    expected = {"instrument": "LSSTCam", "day_obs": seeded.day_obs, "obs_id": seeded.obs_id}
    for span in spans:
        assert expected.items() <= dict(span.attributes or {}).items(), span.name
    assert root.attributes and root.attributes["workflow_id"] == f"unembargo-LSSTCam-{seeded.obs_id}"

    steps = [by_name[f"step:{step}"] for step in STEPS]
    assert [s.attributes and s.attributes["step"] for s in steps] == list(STEPS)
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in steps)
    starts = [s.start_time or 0 for s in steps]
    assert starts == sorted(starts)
    assert all(s.attributes and s.attributes["already_done"] is False for s in steps)
    for step, span in zip(STEPS, steps, strict=True):
        attempt = by_name[f"activity:{STEPS[step].activity}"]
        assert attempt.parent is not None and attempt.parent.span_id == span.context.span_id
        assert attempt.attributes and (attempt.attributes["step"], attempt.attributes["attempt"]) == (step, 1)
    assert len(spans) == 1 + 2 * len(STEPS), sorted(s.name for s in spans)

    zipped = [r for r in logged.records if r.getMessage().startswith("zipped ")]
    assert zipped and all((r.obs_id, r.step) == (seeded.obs_id, "zip") for r in zipped)  # type: ignore[attr-defined]
