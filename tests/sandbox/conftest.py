"""Sandboxed probe plugins built through the real composition path (the entry's sandbox: key)."""

from __future__ import annotations

from typing import Any

import pytest

import mlx_resources.sandbox  # noqa: F401 - installs the runner
from mlx_plugins.kernel.composition import parse_composition
from mlx_plugins.kernel.registry import PluginRegistry, PluginSpec, default_registry

REGISTRY = PluginRegistry(
    [
        *default_registry(),
        PluginSpec(
            kind="data_source", name="sandbox_probe", target="tests.sandbox.probe:ProbeSource"
        ),
    ]
)


def compose(
    sandbox: dict[str, Any] | None, config: dict[str, Any] | None = None, environ: Any = None
) -> Any:
    """The probe plugin as the composition builds it (``sandbox`` None: not sandboxed)."""
    import os

    entry: dict[str, Any] = {"plugin": "sandbox_probe", "config": config or {}}
    if sandbox is not None:
        entry["sandbox"] = sandbox
    comp = parse_composition(
        {
            "plugins": {
                "data_source": [entry],
                "ml_platform": "local_torch",
                "drift_detector": "polars",
            }
        },
        source="mlx.yaml",
        environ=os.environ if environ is None else environ,
        registry=REGISTRY,
    )
    return comp.resources()["sandbox_probe"]


@pytest.fixture
def probe():
    return compose


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlx_plugins.kernel import telemetry

    exporter = InMemorySpanExporter()
    telemetry.configure(exporter)
    yield exporter
    telemetry.shutdown()
