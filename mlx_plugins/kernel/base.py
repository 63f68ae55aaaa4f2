"""The base class of every plugin: a Dagster resource with metadata, health and lifecycle."""

from __future__ import annotations

import time
from typing import ClassVar

import dagster as dg
from pydantic import BaseModel, ConfigDict

from mlx_plugins.kernel.metadata import PluginMetadata


class HealthStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    healthy: bool
    detail: str = ""
    latency_ms: float = 0.0


class MLXPlugin(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A swappable platform part.

    Subclasses set ``metadata`` and keep clients, pools and caches in private attributes
    created by :meth:`open` and released by :meth:`close`. Dagster calls them around each
    step through ``setup_for_execution``/``teardown_after_execution``; tests and the CLI use
    the ``session()`` context manager. Heavy libraries (torch, bentoml, cloud SDKs) are imported
    inside methods so that loading the code location never pays for them.
    """

    metadata: ClassVar[PluginMetadata]

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Create clients, pools and caches. Idempotent."""

    def close(self) -> None:
        """Release what :meth:`open` created. Idempotent."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.open()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def session(self) -> _Session:
        return _Session(self)

    # -- health --------------------------------------------------------------------------------
    def check_health(self) -> HealthStatus:
        """Probe the plugin's backing system. Override ``_probe`` rather than this."""
        start = time.perf_counter()
        try:
            detail = self._probe()
        except Exception as exc:  # a failed probe is a result, not a crash
            return HealthStatus(
                healthy=False,
                detail=f"{type(exc).__name__}: {exc}",
                latency_ms=(time.perf_counter() - start) * 1000,
            )
        return HealthStatus(
            healthy=True, detail=detail or "ok", latency_ms=(time.perf_counter() - start) * 1000
        )

    def _probe(self) -> str:
        return "ok"


class _Session:
    def __init__(self, plugin: MLXPlugin) -> None:
        self.plugin = plugin

    def __enter__(self) -> MLXPlugin:
        self.plugin.open()
        return self.plugin

    def __exit__(self, *exc: object) -> None:
        self.plugin.close()
