"""Spans reach an OTLP/HTTP collector when OTEL_EXPORTER_OTLP_ENDPOINT points at it: a loopback
http.server speaking the OTLP/HTTP protobuf protocol, fed by the official exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mlx_plugins.kernel import telemetry
from tests.telemetry._collector import Collector, running_collector


@pytest.fixture
def collector() -> Iterator[Collector]:
    with running_collector() as server:
        yield server


def test_spans_reach_a_loopback_otlp_http_collector(collector, monkeypatch):
    port = collector.server_address[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mlx-otlp-test")
    telemetry.configure(force=True)
    try:
        with telemetry.traced_span("otlp_probe", rows=3) as span:
            trace_id = span.get_span_context().trace_id
    finally:
        telemetry.shutdown()  # flushes the batch processor (and the metric reader)
    traces = [body for path, body in collector.posts if path == "/v1/traces"]
    assert traces, f"no POST /v1/traces reached the collector: {[p for p, _ in collector.posts]}"
    spans = []
    for body in traces:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert service["service.name"] == "mlx-otlp-test"
            spans += [s for ss in rs.scope_spans for s in ss.spans]
    probe = next(s for s in spans if s.name == "otlp_probe")
    assert int.from_bytes(probe.trace_id, "big") == trace_id
    assert {a.key: a.value.int_value for a in probe.attributes}["rows"] == 3
