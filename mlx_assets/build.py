"""Definitions from a composition: switching a plugin is a change of the composition only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import ValidationError

from mlx_assets import jobs
from mlx_assets.evaluation import evaluation
from mlx_assets.features import flight_features
from mlx_assets.ingest import raw
from mlx_assets.monitoring import drift_sensor, feature_drift
from mlx_assets.monitoring.arrival_schedule import build_arrival_schedule
from mlx_assets.monitoring.incident_summary import build_incident_summary, llm_provider_keys
from mlx_assets.registry import registered_model
from mlx_assets.training import model, training_set
from mlx_assets.versioning import config_fingerprint
from mlx_plugins.kernel.composition import Composition
from mlx_plugins.kernel.errors import CompositionError, from_validation_error
from mlx_plugins.kernel.kinds import SLOTS

STAGES = [raw, flight_features, training_set, model, evaluation, registered_model, feature_drift]
REQUIRED_DATA_SOURCE = "flights"


def platform_resources(composition: Composition) -> dict[str, object]:
    """The non-plugin resources, all rooted in the platform's home folder."""
    from mlx_resources.atomic_pickle_io import AtomicFilesystemIOManager
    from mlx_resources.io_managers.polars_io import PolarsIOManager
    from mlx_resources.platform import Platform

    try:
        platform = Platform(**composition.settings)
    except ValidationError as exc:
        raise from_validation_error(
            composition.source, "settings", exc, Platform.model_fields
        ) from None
    except Exception as exc:
        raise CompositionError(
            composition.source,
            "settings",
            str(exc).splitlines()[0],
            "see mlx_resources/platform.py for the fields",
        ) from None
    home = platform.home_path
    return {
        "platform": platform,
        "io_manager": io_manager_from_slot(composition, home, PolarsIOManager),
        # Dagster's pickling IO manager, writing atomically (a kill leaves the old value).
        "object_io_manager": AtomicFilesystemIOManager(base_dir=str(home / "objects")),
    }


IO_MANAGERS = {"polars_files": "PolarsIOManager"}
"""Choices of the ``plugins.io_manager`` slot (``kinds.SLOTS``): name -> class of
``mlx_resources.io_managers.polars_io``."""


def io_manager_from_slot(composition: Composition, home: Path, default: type) -> object:
    """The ``plugins.io_manager`` slot as an IO manager: ``{plugin: polars_files, config:
    {base_path: ..., format: ...}}`` or just ``polars_files``; absent: ``polars_files`` at
    ``<home>/data``. A ``base_path`` URL (``s3://...``, ``file://...``) is used exactly as
    written (never resolved as a local path); a relative local path is relative to the home.

    Raises:
        CompositionError: an unknown plugin name, key or config value, naming the key.
    """
    key = "plugins.io_manager"
    slot = composition.slots.get("io_manager", SLOTS["io_manager"])
    if isinstance(slot, str):
        slot = {"plugin": slot}
    if not isinstance(slot, dict) or set(slot) - {"plugin", "config"}:
        raise CompositionError(
            composition.source,
            key,
            f"must be a plugin name or {{plugin: ..., config: {{...}}}}, not {slot!r}",
            "write io_manager: {plugin: polars_files, config: {base_path: s3://bucket/mlx}}",
        )
    name = slot.get("plugin", SLOTS["io_manager"])
    if name not in IO_MANAGERS:
        raise CompositionError(
            composition.source,
            f"{key}.plugin",
            f"unknown io_manager {name!r}",
            f"use one of: {', '.join(IO_MANAGERS)}",
        )
    cls: Any = default
    config = dict(slot.get("config") or {})
    base = str(config.get("base_path", "data"))
    if "://" not in base and not Path(base).expanduser().is_absolute():
        base = str(home / base)  # a local folder of the home (the default: <home>/data)
    config["base_path"] = base if "://" in base else str(Path(base).expanduser())
    try:
        return cls(**config)
    except ValidationError as exc:
        raise from_validation_error(
            composition.source, f"{key}.config", exc, cls.model_fields
        ) from None


def plugin_resources(
    composition: Composition, platform: dict[str, object] | None = None
) -> dict[str, Any]:
    """The composition's plugin instances by resource key, those that keep data (the
    ``model_registry``: ``with_home``) placed in the platform's home folder unless their config
    says where. ``platform``: :func:`platform_resources` when already built."""
    home = (platform or platform_resources(composition))["platform"].home_path  # type: ignore[attr-defined]
    out = composition.resources()
    for key, plugin in out.items():
        if callable(place := getattr(plugin, "with_home", None)):
            out[key] = place(home)
    return out


def config_fingerprints(composition: Composition, platform: Any) -> dict[str, str]:
    """Per asset, a fingerprint of the composition values its output depends on.

    It becomes part of the asset's code version (``<source hash>-<fingerprint>``), so changing
    ``mlx.yaml`` makes exactly the affected assets stale, as a code change would: the data
    source's config -> the raw tables; ``settings.window`` -> ``training_set``; the
    ``ml_platform`` plugin and config -> ``model``; ``settings.quality_gate`` ->
    ``model_evaluation``; the registry and ``settings.model_name`` -> ``registered_model``; the
    drift detector and the severity rule (``warn_share``, ``retrain_on_dataset_drift``) ->
    ``feature_drift``. Settings that only steer the sensor or schedule (cooldown, cron) are
    left out. A drift-triggered retraining moves the window through run config, not here, so it
    does not make the configured window look stale.
    """

    def plugins(kind: str, name: str | None = None) -> list[list[Any]]:
        return [
            [e.plugin, e.config]
            for e in composition.of_kind(kind)
            if name is None or e.name == name
        ]

    source = plugins("data_source", REQUIRED_DATA_SOURCE)
    drift_rule = platform.drift.model_dump(include={"warn_share", "retrain_on_dataset_drift"})
    return {
        "raw_flights": config_fingerprint(source),
        "raw_weather": config_fingerprint(source),
        "planes": config_fingerprint(source),
        "training_set": config_fingerprint(platform.window.model_dump()),
        "model": config_fingerprint(plugins("ml_platform")),
        "model_evaluation": config_fingerprint(platform.quality_gate.model_dump()),
        "registered_model": config_fingerprint([plugins("model_registry"), platform.model_name]),
        "feature_drift": config_fingerprint([plugins("drift_detector"), drift_rule]),
    }


def with_config_versions(
    asset: dg.AssetsDefinition, fingerprints: dict[str, str]
) -> dg.AssetsDefinition:
    """``asset`` with ``-<fingerprint>`` appended to the code version of each key listed."""

    def mapped(spec: dg.AssetSpec) -> dg.AssetSpec:
        extra = fingerprints.get(spec.key.to_user_string())
        if extra is None or spec.code_version is None:
            return spec
        return spec.replace_attributes(code_version=f"{spec.code_version}-{extra}")

    return asset.map_asset_specs(mapped)


def build_definitions(composition: Composition) -> dg.Definitions:
    if not any(e.name == REQUIRED_DATA_SOURCE for e in composition.of_kind("data_source")):
        raise CompositionError(
            composition.source,
            "plugins.data_source",
            f"the lifecycle reads the data source named {REQUIRED_DATA_SOURCE!r}; none is",
            f"add name: {REQUIRED_DATA_SOURCE} to one data_source entry",
        )
    platform = platform_resources(composition)
    resources: dict[str, Any] = {**plugin_resources(composition, platform), **platform}
    fingerprints = config_fingerprints(composition, resources["platform"])
    assets = [
        *dg.load_assets_from_modules(STAGES),
        build_incident_summary(llm_provider_keys(composition)),
    ]
    return dg.Definitions(
        assets=[with_config_versions(a, fingerprints) for a in assets],
        asset_checks=dg.load_asset_checks_from_modules(STAGES),
        jobs=jobs.JOBS,
        schedules=[build_arrival_schedule(resources["platform"].arrival_cron)],
        sensors=[drift_sensor.drift_retrain_sensor],
        resources=resources,
        executor=jobs.EXECUTOR,
    )
