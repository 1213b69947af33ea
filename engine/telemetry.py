"""Traces and log fields: one trace per exposure, every log line naming its exposure and step.

The Temporal SDK's OpenTelemetry plugin (``engine.connection.connect``) carries the
trace context from workflow to activity. Spans go to the console (stderr) by
default, or over OTLP/HTTP when ``otel_endpoint`` is set (``Settings.span_exporter``).

    >>> with log_fields({"obs_id": "MC_O_20251231_000010", "step": "zip"}):
    ...     current_log_fields()["step"]
    'zip'
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

import opentelemetry.context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider, create_tracer_provider

from unembargo.models.names import SA_OBS_ID, SA_STEP
from unembargo.models.settings import Settings

SERVICE = "unembargo"
# Exporters already added to this process's provider, so a second connect adds none.
_added: set[tuple[str, str | None]] = set()
_fields: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "unembargo_log", default=MappingProxyType({})
)


def tracer_provider() -> ReplaySafeTracerProvider:
    """This process's tracer provider, installed globally on first use.

    Workflow workers need a replay-safe one: span ids come from the workflow's
    seeded random, and spans are not emitted again while history replays.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, ReplaySafeTracerProvider):
        return current
    provider = create_tracer_provider(resource=Resource.create({"service.name": SERVICE}))
    trace.set_tracer_provider(provider)
    return provider


def configure_tracing(settings: Settings) -> None:
    """Export spans where the settings say (each exporter once per process)."""
    provider = tracer_provider()
    key = (settings.span_exporter(), settings.otel_endpoint)
    processor = span_processor(settings) if key not in _added else None
    if processor is not None:
        _added.add(key)
        provider.add_span_processor(processor)


def span_processor(settings: Settings) -> SpanProcessor | None:
    """The processor and exporter the settings ask for; None for "none"."""
    kind = settings.span_exporter()
    if kind == "none":
        return None
    if kind == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr, formatter=_one_line))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings)))


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


def traces_url(settings: Settings) -> str:
    """The collector's traces URL: the endpoint, ending in /v1/traces."""
    endpoint = (settings.otel_endpoint or "").rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def flush() -> None:
    """Send what is buffered (a CLI process leaves without interpreter teardown)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, ReplaySafeTracerProvider):
        provider.force_flush(timeout_millis=5000)


@contextmanager
def new_traces() -> Iterator[None]:
    """Run the block outside any current span, so each workflow it starts begins its own trace."""
    token = opentelemetry.context.attach(opentelemetry.context.Context())
    try:
        yield
    finally:
        opentelemetry.context.detach(token)


@contextmanager
def log_fields(fields: Mapping[str, object]) -> Iterator[None]:
    """Name the exposure and step on every log line the block writes (threads it starts included)."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def current_log_fields() -> Mapping[str, object]:
    return _fields.get()


class ExposureFields(logging.Filter):
    """Give each record ``obs_id`` and ``step`` ("-" outside an activity) for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _fields.get()
        for key in (SA_OBS_ID.name, SA_STEP.name):
            if not hasattr(record, key):
                setattr(record, key, fields.get(key, "-"))
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(obs_id)s %(step)s] %(message)s"


def setup_logging(level: int) -> None:
    """Root logging at ``level``, every line carrying obs_id and step."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ExposureFields) for f in handler.filters):
            handler.addFilter(ExposureFields())
