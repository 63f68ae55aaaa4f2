"""W3C trace context into served requests: a real ``bentoml serve`` exporting OTLP/HTTP (from the
``OTEL_*`` variables, as the platform configures it) to a loopback collector continues the
caller's trace with one span per prediction request, directly and through the nginx router."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest

from mlx_plugins.kernel import telemetry
from mlx_plugins.model_servers.bentoml_runtime import SPAN_NAME, request_tracer
from mlx_plugins.model_servers.bentoml_server import BentoMLServer
from mlx_plugins.model_servers.routing import NginxRouter, RouterError, RoutingTable, find_nginx
from tests.serving.test_bentoml_server import example_row_tiny
from tests.telemetry._collector import running_collector


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _span_of(collector: Any, trace_id: str) -> Any:
    """The server's span in ``trace_id`` once the batch exporter sent it (bounded wait)."""
    for _ in range(300):
        found = [s for s in collector.spans() if s.trace_id.hex() == trace_id]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.1)
    names = [(s.name, s.trace_id.hex()) for s in collector.spans()]
    pytest.fail(f"no span of trace {trace_id} reached the collector; it has {names}")


def test_a_served_request_continues_the_callers_trace(
    serving_home, tiny_version, tiny_registry, start_server, monkeypatch, tmp_path
) -> None:
    with running_collector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{collector.url}/v1/traces")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: the batch goes out soon
        monkeypatch.setenv("OTEL_SERVICE_NAME", "mlx-serving-test")
        server = BentoMLServer(home=str(serving_home / "bentoml"), die_with_caller=True)
        package = server.package(tiny_version, tiny_registry)
        handle = start_server(package, server=server, workers=1)
        url = f"{handle.url}/predict"

        trace_id, parent_id, header = _traceparent()
        rows = [example_row_tiny(), {**example_row_tiny(), "cat": None}]
        resp = httpx.post(url, json={"rows": rows}, headers={"traceparent": header}, timeout=30)
        assert resp.status_code == 200, resp.text
        span = _span_of(collector, trace_id)
        assert span.name == SPAN_NAME
        assert span.parent_span_id.hex() == parent_id  # the caller's span is the parent
        assert span.kind == span.SPAN_KIND_SERVER
        assert _attrs(span) == {
            "mlx.model": package.model,
            "mlx.version": package.version_label,
            "mlx.rows": 2,
            "http.request.method": "POST",
            "url.path": "/predict",
            "http.response.status_code": 200,
        }
        assert span.end_time_unix_nano >= span.start_time_unix_nano

        # a refused body is traced too: its status, no rows
        bad_trace, _, bad_header = _traceparent()
        bad = httpx.post(url, json={"rows": [{"x": "a"}]}, headers={"traceparent": bad_header})
        assert bad.status_code == 422
        assert _attrs(_span_of(collector, bad_trace))["http.response.status_code"] == 422
        assert _attrs(_span_of(collector, bad_trace))["mlx.rows"] == 0

        # through the router: nginx passes traceparent on, the same span continues the trace
        try:
            find_nginx()
        except RouterError:
            return
        router = NginxRouter(tmp_path / "router").start(
            RoutingTable.single(package.version_label, [f"127.0.0.1:{handle.port}"])
        )
        try:
            routed_trace, routed_parent, routed_header = _traceparent()
            routed = httpx.post(
                f"{router.url}/predict",
                json={"rows": rows[:1]},
                headers={"traceparent": routed_header},
                timeout=30,
            )
            assert routed.status_code == 200, routed.text
        finally:
            router.stop()
        span = _span_of(collector, routed_trace)
        assert span.parent_span_id.hex() == routed_parent
        assert _attrs(span)["mlx.rows"] == 1


def test_without_an_exporter_requests_make_no_span(monkeypatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    telemetry.shutdown()
    try:
        assert request_tracer() is None  # the request path checks this and does nothing
    finally:
        telemetry.shutdown()
