"""Switching the model registry is a change of the composition file only: the same
``registered_model`` asset registers into ``local`` (the default) or ``mlflow``."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from mlx_assets.build import build_definitions
from mlx_assets.registry.registered_model import build_registered_model
from mlx_plugins.kernel.composition import load_composition
from mlx_plugins.model_registries.local import LocalModelRegistry
from tests.conftest import flights_lifecycle
from tests.resources.test_registered_model_noop import (
    STATE,
    model,
    model_evaluation,
    training_set,
)

registered_model = build_registered_model(flights_lifecycle())

BASE = """
plugins:
  data_source:
    - {name: flights, plugin: nycflights13}
  ml_platform: local_torch
  drift_detector: polars
"""


def _definitions(tmp_path: Path, extra: str = "") -> dg.Definitions:
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE + extra)
    return build_definitions(load_composition(path))


def _register_through_asset(tmp_path: Path, defs: dg.Definitions) -> tuple[object, str]:
    res = defs.resources
    objects = dg.FilesystemIOManager(base_dir=str(tmp_path / "objects"))
    resources = {
        "platform": res["platform"],
        "model_registry": res["model_registry"],
        "io_manager": objects,
        "object_io_manager": objects,
    }
    STATE["data"] = 1
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        result = dg.materialize(
            [training_set, model, model_evaluation, registered_model],
            instance=instance,
            resources=resources,
        )
    assert result.success
    [mat] = result.asset_materializations_for_node("registered_model")
    return res["model_registry"], mat.metadata["tag"].value


def test_default_is_local_in_the_home(tmp_path):
    registry, tag = _register_through_asset(tmp_path, _definitions(tmp_path))
    assert isinstance(registry, LocalModelRegistry)
    home = Path(os.environ["MLX_HOME"])
    assert Path(registry.root) == home / "registry"
    assert tag == "flight_delay:v0001"
    [v] = registry.versions("flight_delay")
    assert Path(v.artifact_path).is_relative_to(home / "registry")


def test_mlflow_is_one_line_of_the_composition(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlx_plugins.model_registries.mlflow_registry import MLflowModelRegistry

    defs = _definitions(tmp_path, "  model_registry: mlflow\n")
    registry, tag = _register_through_asset(tmp_path, defs)
    assert isinstance(registry, MLflowModelRegistry)
    home = Path(os.environ["MLX_HOME"])
    assert registry.tracking_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    assert tag == "flight_delay:v0001"
    # it is in MLflow's registry, with its lineage
    [mv] = registry.client.search_model_versions("name = 'flight_delay'")
    run = registry.client.get_run(mv.run_id)
    assert run.data.tags["mlx.training_data_version"] == "ts-1"
    assert not (home / "registry").exists()  # nothing went to the local registry


def test_mlflow_config_is_validated(tmp_path):
    from mlx_plugins.kernel.errors import CompositionError

    with pytest.raises(CompositionError, match="tracking_ur"):
        _definitions(tmp_path, "  model_registry: {plugin: mlflow, config: {tracking_url: x}}\n")
