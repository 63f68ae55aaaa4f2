"""Telemetry fixtures: an in-memory span exporter and the audit log reset per test."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlx_plugins.kernel import telemetry
from mlx_resources.telemetry import audit


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter)
    yield exporter
    telemetry.shutdown()
    audit.uninstall()
