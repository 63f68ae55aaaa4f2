"""Definitions from a composition: switching a plugin is a change of the composition only."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import ValidationError

from mlx_assets import jobs
from mlx_assets.evaluation import evaluation
from mlx_assets.features import flight_features
from mlx_assets.ingest import raw
from mlx_assets.monitoring import drift_sensor, feature_drift
from mlx_assets.monitoring.arrival_schedule import build_arrival_schedule
from mlx_assets.monitoring.incident_summary import build_incident_summary
from mlx_assets.registry import registered_model
from mlx_assets.training import model, training_set
from mlx_plugins.kernel.composition import Composition
from mlx_plugins.kernel.errors import CompositionError, from_validation_error

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
        "io_manager": PolarsIOManager(base_path=str(home / "data")),
        # Dagster's pickling IO manager, writing atomically (a kill leaves the old value).
        "object_io_manager": AtomicFilesystemIOManager(base_dir=str(home / "objects")),
    }


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
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules(STAGES),
            build_incident_summary(tuple(e.name for e in composition.of_kind("llm_provider"))),
        ],
        asset_checks=dg.load_asset_checks_from_modules(STAGES),
        jobs=jobs.JOBS,
        schedules=[build_arrival_schedule(resources["platform"].arrival_cron)],
        sensors=[drift_sensor.drift_retrain_sensor],
        resources=resources,
        executor=jobs.EXECUTOR,
    )
