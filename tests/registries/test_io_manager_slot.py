"""The IO manager is a composition slot: ``plugins.io_manager``, today's default when absent;
a URL base path is kept exactly as written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlx_assets.build import build_definitions
from mlx_plugins.kernel.composition import load_composition
from mlx_plugins.kernel.errors import CompositionError
from mlx_resources.io_managers.polars_io import PolarsIOManager

BASE = """
plugins:
  data_source:
    - {name: flights, plugin: nycflights13}
  ml_platform: local_torch
  drift_detector: polars
"""


def _io(tmp_path: Path, extra: str = "", **env: str) -> PolarsIOManager:
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE + extra)
    io = build_definitions(load_composition(path, environ={**os.environ, **env})).resources[
        "io_manager"
    ]
    assert isinstance(io, PolarsIOManager)
    return io


def test_absent_is_todays_default(tmp_path):
    assert _io(tmp_path).base_path == str(Path(os.environ["MLX_HOME"]) / "data")


def test_url_base_path_is_not_resolved(tmp_path):
    io = _io(
        tmp_path,
        "  io_manager: {plugin: polars_files, config: {base_path: 's3://bucket/mlx/data', "
        "format: parquet}}\n",
    )
    assert io.base_path == "s3://bucket/mlx/data"
    assert io.format == "parquet"
    local = _io(tmp_path, "  io_manager: {plugin: polars_files, config: {base_path: tables}}\n")
    assert local.base_path == str(Path(os.environ["MLX_HOME"]) / "tables")


def test_env_override_reaches_the_slot(tmp_path):
    io = _io(
        tmp_path,
        "  io_manager: polars_files\n",
        MLX__PLUGINS__IO_MANAGER__CONFIG__BASE_PATH="file:///srv/mlx/data",
    )
    assert io.base_path == "file:///srv/mlx/data"


@pytest.mark.parametrize(
    ("slot", "match"),
    [
        ("  io_manager: pickle\n", r"plugins.io_manager.plugin: unknown io_manager 'pickle'"),
        (
            "  io_manager: {plugin: polars_files, config: {format: csv}}\n",
            r"plugins.io_manager.config",
        ),
        ("  io_manager: {plugin: polars_files, settings: {}}\n", r"plugins.io_manager: must be"),
    ],
)
def test_mistakes_name_the_key(tmp_path, slot, match):
    with pytest.raises(CompositionError, match=match):
        _io(tmp_path, slot)
