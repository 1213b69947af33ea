"""Telemetry without a service: the exporter the settings choose, spans posted to an OTLP
collector (a local HTTP listener), failures short enough for Temporal. (One real run's
trace: tests/stack/test_tracing.py.)"""

from __future__ import annotations

import http.server
import threading

from opentelemetry.sdk.trace import TracerProvider

from unembargo.engine.telemetry import span_processor, traces_url
from unembargo.models.errors import SourceMismatch
from unembargo.models.settings import Settings
from unembargo.workers.observe import MESSAGE_LIMIT, short_failure


class Collector(http.server.BaseHTTPRequestHandler):
    """Records the paths that spans are posted to."""

    posted: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        Collector.posted.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_exporter_follows_the_settings() -> None:
    assert Settings().span_exporter() == "console"
    assert Settings(otel_endpoint="http://collector:4318").span_exporter() == "otlp"
    assert Settings(otel_endpoint="http://collector:4318", otel_exporter="none").span_exporter() == "none"
    assert span_processor(Settings(otel_exporter="none")) is None
    assert traces_url(Settings(otel_endpoint="http://collector:4318/")) == "http://collector:4318/v1/traces"


def test_spans_reach_an_otlp_collector() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    processor = span_processor(Settings(otel_endpoint=f"http://127.0.0.1:{server.server_port}"))
    assert processor is not None
    provider = TracerProvider()
    provider.add_span_processor(processor)
    try:
        with provider.get_tracer(__name__).start_as_current_span("exposure", attributes={"obs_id": "X"}):
            pass
        assert provider.force_flush(timeout_millis=10_000)
        assert Collector.posted == ["/v1/traces"]
    finally:
        provider.shutdown()
        server.shutdown()


def test_failures_reach_temporal_short_and_under_their_own_name() -> None:
    """A deep library error must not exceed what the server keeps as a pending activity's last
    failure; the retry policies still match its class name."""
    try:
        try:
            raise ConnectionError("connection refused " * 500)
        except ConnectionError as low:
            raise SourceMismatch("s3://embargo/x.fits reads back short") from low
    except SourceMismatch as err:
        failure = short_failure(err)
    assert failure.type == "SourceMismatch"
    assert failure.message == "s3://embargo/x.fits reads back short"
    assert failure.__cause__ is None
    long = short_failure(ConnectionError("refused " * 1000))
    assert long.type == "ConnectionError" and len(long.message) < MESSAGE_LIMIT + 100
