"""Loading the code location imports no heavy library and no unused plugin module."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "torch",
    "bentoml",
    # a namespace-package .pth creates an empty `snowflake` module at start-up; the SDKs are these
    "snowflake.connector",
    "snowflake.snowpark",
    "dagster_snowflake",
    "dagster_databricks",
    "pyspark",
    "scipy",
    "numpy",
    "sklearn",
    "pandas",
    "evidently",
    "openai",
    "anthropic",
    # telemetry starts with the first plugin call of a run, not at load
    "mlx_plugins.kernel.telemetry",
    "prometheus_client",
    "opentelemetry.trace",
    # the local model registry's SQLite index is opened on first use
    "sqlite3",
    # run-time parts of the jobs' executor and the hot-swap tool (the guard needs only its
    # variable's name)
    "mlx_plugins.kernel.process_identity",
    "mlx_resources.leftovers",
    "mlx_resources.hot_swap",
    # the DDP protocol of local_torch (its models; still importable from local_torch)
    "mlx_plugins.ml_platforms.ddp_protocol",
    # the drift sensor's cursor models (a sensor tick imports them)
    "mlx_assets.monitoring.drift_cursor",
    # settings.llm (LLMGroupSettings, the llm_settings resource): mlx.yaml has no llm_provider
    # and no settings.llm, so nothing uses the group's policy
    "mlx_plugins.llm_providers.settings",
)
UNUSED_PLUGIN_MODULES = ("mlx_plugins.ml_platforms.torch_mlp",)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_definitions_import_no_heavy_library():
    loaded = _modules_after("import mlx_assets.definitions as d; d.defs.resolve_asset_graph()")
    assert "mlx_plugins.ml_platforms.local_torch" in loaded  # used by the composition
    for name in HEAVY + UNUSED_PLUGIN_MODULES:
        assert name not in loaded, f"{name} was imported while loading the code location"


def test_registry_listing_imports_no_plugin_module():
    loaded = _modules_after(
        "from mlx_plugins.kernel.registry import default_registry\n"
        "names = [s.name for s in default_registry()]"
    )
    assert not any(
        m.startswith(
            (
                "mlx_plugins.data_sources.",
                "mlx_plugins.ml_platforms.",
                "mlx_plugins.drift_detectors.",
            )
        )
        for m in loaded
    )
    assert "polars" not in loaded


# pydantic models the code location defines but does not validate while loading: built on first
# use (``defer_build``), each ~0.2-3 ms of schema generation at load otherwise. (Those of asset
# modules are left as they were: an edit there changes the assets' code versions.)
RUNTIME_MODELS = (
    "mlx_plugins.kernel.sandbox:SandboxPlan",
    "mlx_plugins.kernel.base:HealthStatus",
    "mlx_plugins.data_sources.base:TableInfo",
    "mlx_plugins.ml_platforms.base:TrainingSpec",
    "mlx_plugins.ml_platforms.base:TrainedModel",
    "mlx_plugins.ml_platforms.local_torch:DDPJob",
    "mlx_plugins.ml_platforms.local_torch:DDPResultMessage",
    "mlx_plugins.drift_detectors.base:DriftReport",
    "mlx_plugins.model_registries.base:ModelVersion",
    "mlx_assets.monitoring.events:DriftObservation",
    "mlx_assets.monitoring.drift_sensor:DriftCursor",
)


def test_runtime_models_are_built_on_first_use_not_at_load():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, json, sys\n"
            "import mlx_assets.definitions as d\n"
            "d.defs.resolve_asset_graph()\n"
            "def cls(t):\n"
            "    m, _, a = t.partition(':')\n"
            "    return getattr(importlib.import_module(m), a)\n"
            f"names = {list(RUNTIME_MODELS)!r}\n"
            "built = [t for t in names if cls(t).__pydantic_complete__]\n"
            "from mlx_assets.monitoring.drift_sensor import DriftCursor\n"
            "cursor = DriftCursor.model_validate_json('{\"after_storage_id\": 7}')\n"
            "print(json.dumps([built, cursor.after_storage_id]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    built, storage_id = json.loads(out.stdout.strip().splitlines()[-1])
    assert built == [], f"built while loading the code location: {built}"
    assert storage_id == 7  # and usable as before once used
