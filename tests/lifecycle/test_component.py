"""The lifecycle as a reusable component: several instances in one code location, each from a
``defs.yaml``; bad instances are clear errors; a third instance on a folder of parquet files runs
end to end with no Python of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mlx_assets.build import build_definitions, lifecycles_of
from mlx_assets.component.loader import load_spec, load_specs
from mlx_plugins.kernel.composition import load_composition
from mlx_plugins.kernel.errors import CompositionError

REPO = Path(__file__).resolve().parents[2]
BOTH = {"MLX__SETTINGS__LIFECYCLES": "[flight_delay, seattle_weather]"}


def _defs(**environ: str) -> dg.Definitions:
    return build_definitions(load_composition(REPO / "mlx.yaml", environ=environ))


def test_two_instances_each_have_their_prefix_group_jobs_sensor_and_schedule():
    defs = _defs(**BOTH)
    flights, seattle = lifecycles_of(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    stages = ("training_set", "model", "model_evaluation", "registered_model", "feature_drift")
    # the first instance keeps its unprefixed keys; the second is under its name
    assert {"raw_flights", "flight_features", *stages} <= keys
    assert {f"seattle_weather/{s}" for s in ("raw_weather", "features", *stages)} <= keys
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["seattle_weather", "model"])).group_name == "seattle_weather"
    assert graph.get(dg.AssetKey("model")).group_name == "flight_delay"
    # lineage stays inside an instance
    parents = graph.get(dg.AssetKey(["seattle_weather", "training_set"])).parent_keys
    assert parents == {dg.AssetKey(["seattle_weather", "features"])}
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {"daily", "training", "monitoring", "reference"} <= jobs
    assert {"seattle_weather__daily", "seattle_weather__training"} <= jobs
    assert "seattle_weather__reference" not in jobs  # it has no reference table
    sensors = {s.name: s for s in defs.sensors or []}
    assert sensors["seattle_weather__drift_retrain_sensor"].job_name == "seattle_weather__training"
    assert sensors["drift_retrain_sensor"].job_name == "training"
    schedules = {s.name for s in defs.schedules or []}
    assert schedules == {"arrival", "seattle_weather__arrival"}
    assert seattle.task == "multiclass" and flights.task == "binary"
    # the instance's ml_platform overrides make a resource of its own
    assert "seattle_weather__ml_platform" in defs.resources
    assert defs.resources["seattle_weather__ml_platform"].epochs == 30


def test_the_instances_in_the_repository_validate_and_settings_pick_them():
    assert [s.name for s, _ in load_specs()] == ["flight_delay", "seattle_weather"]
    defs = _defs(MLX__SETTINGS__LIFECYCLES="[seattle_weather]")
    assert [lc.name for lc in lifecycles_of(defs)] == ["seattle_weather"]
    with pytest.raises(CompositionError) as err:
        _defs(MLX__SETTINGS__LIFECYCLES="[weather_model]")
    assert "weather_model" in str(err.value) and "seattle_weather" in str(err.value)


def _write(folder: Path, name: str, attributes: str) -> Path:
    path = folder / name / "defs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(attributes).strip(), "  ")
    path.write_text(f"type: mlx_assets.component.MLLifecycle\nattributes:\n{body}\n")
    return path


GOOD = """
name: m
data:
  source: flights
  start: 2013-01-01
  tables: [{name: flights}]
features: {numeric: [distance], categorical: [carrier]}
target: {column: arr_delay, kind: regression}
"""


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (("features: {", "features: {numerc: [x], "), "attributes.features.numerc", "numeric"),
        (("features: {", "featurs: {"), "attributes.featurs", "did you mean 'features'"),
        (("kind: regression", "kind: multiclass"), "attributes.target", "classes"),
        (("kind: regression", "kind: ordinal"), "attributes.target.kind", "regression"),
        (("name: m", "name: My-Model"), "attributes.name", "lower-case"),
        (("start: 2013-01-01", "start: 2013-13-01"), "attributes.data.start", "2013-13-01"),
        (("categorical: [carrier]", "categorical: [distance]"), "attributes.features", "both"),
        (("target: {", "gate: {min: {roc_auc: 0.6}}\ntarget: {"), "attributes", "roc_auc"),
        (
            (
                "target: {",
                "window: {train_start: 2012-06-01, train_end: 2013-03-01, "
                "test_start: 2013-04-01, test_end: 2013-05-01}\ntarget: {",
            ),
            "attributes",
            "not inside the data",
        ),
        (
            ("kind: regression}", "kind: binary}\ngate: {min: {accuracy: 0.7}}"),
            "attributes",
            "accuracy",
        ),
    ],
)
def test_a_bad_instance_names_file_key_and_fix(tmp_path, change, key, words):
    path = _write(tmp_path, "m", GOOD.replace(*change))
    with pytest.raises(CompositionError) as err:
        load_spec(path)
    assert err.value.file == str(path)
    assert err.value.key.startswith(key)
    assert words in str(err.value)


def test_a_misspelled_component_type_is_an_error_not_a_silently_missing_model(tmp_path):
    path = _write(tmp_path, "m", GOOD)
    path.write_text(path.read_text().replace("MLLifecycle", "MLLifecycl"))
    with pytest.raises(CompositionError) as err:
        load_specs(tmp_path)
    assert err.value.key == "type" and "MLLifecycle" in err.value.fix


def test_a_feature_function_whose_module_is_missing_names_the_key(tmp_path):
    path = _write(
        tmp_path, "m", GOOD.replace("features: {", "features: {function: 'nosuch.module:f', ")
    )
    with pytest.raises(CompositionError) as err:
        build_definitions(
            load_composition(REPO / "mlx.yaml", environ={}), lifecycles=load_specs(tmp_path)
        )
    assert err.value.key == "attributes.features.function" and err.value.file == str(path)
    assert "nosuch.module" in err.value.problem


def test_yaml_1_1_booleans_stay_text(tmp_path):
    """``no``/``off`` are labels, not False (YAML 1.2)."""
    spec = load_spec(
        _write(
            tmp_path,
            "m",
            GOOD.replace("kind: regression", "kind: multiclass, classes: [no, off, yes]"),
        )
    )
    assert spec.target.classes == ("no", "off", "yes")


def test_an_instance_on_a_missing_data_source_or_a_taken_prefix_is_refused(tmp_path):
    _write(tmp_path, "a", GOOD.replace("source: flights", "source: lake"))
    with pytest.raises(CompositionError) as err:
        build_definitions(
            load_composition(REPO / "mlx.yaml", environ={}),
            lifecycles=load_specs(tmp_path),
        )
    assert "'lake'" in str(err.value) and "settings.lifecycles" in err.value.fix
    other = tmp_path / "other"
    _write(other, "a", GOOD)
    _write(other, "b", GOOD.replace("name: m", "name: n\nkey_prefix: [m]"))
    with pytest.raises(CompositionError) as err:
        build_definitions(
            load_composition(REPO / "mlx.yaml", environ={}), lifecycles=load_specs(other)
        )
    assert err.value.key == "attributes.key_prefix"


def _parquet_folder(folder: Path, days: int = 120) -> None:
    """Daily parquet files of a learnable binary problem with a categorical feature."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    start = date(2024, 1, 1)
    for i in range(days):
        n = 60
        x = rng.normal(size=n)
        region = rng.choice(["north", "south"], size=n)
        logit = 2.5 * x + np.where(region == "north", 1.0, -1.0)
        churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        pl.DataFrame(
            {
                "day": [start + timedelta(days=i)] * n,
                "usage": x,
                "tenure": rng.integers(1, 60, size=n).astype(np.float64),
                "region": region,
                "churned": churned,
            }
        ).write_parquet(folder / f"{(start + timedelta(days=i)).isoformat()}.parquet")


@pytest.mark.slow
def test_a_third_instance_on_a_parquet_folder_runs_end_to_end_with_no_python(tmp_path):
    """A folder of parquet files, an mlx.yaml and a defs.yaml: `mlx lifecycle` trains,
    evaluates, registers and monitors drift; no Python is written."""
    _parquet_folder(tmp_path / "events")
    defs_dir = tmp_path / "lifecycles"
    _write(
        defs_dir,
        "churn",
        """
        name: churn
        data:
          source: events
          start: 2024-01-01
          end: 2024-04-30
          time_column: day
          tables: [{name: events, key_columns: [region]}]
        features:
          numeric: [usage, tenure]
          categorical: [region]
          slice_by: region
        target: {column: churned, kind: binary}
        window:
          train_start: 2024-01-01
          train_end: 2024-03-10
          valid_days: 10
          test_start: 2024-03-11
          test_end: 2024-04-09
        """,
    )
    (tmp_path / "mlx.yaml").write_text(
        textwrap.dedent(
            f"""
            plugins:
              data_source:
                - name: events
                  plugin: files
                  config:
                    files:
                      events: {{path: {tmp_path / "events"}, date_column: day}}
              ml_platform:
                plugin: local_torch
                config: {{hidden: [16], epochs: 12, batch_size: 256}}
              drift_detector: polars
            settings:
              defs_folder: lifecycles
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX__")}
    env.update(MLX_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle", str(tmp_path / "mlx.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "churn/v0001" in out or "churn v0001" in out or "v0001" in out
    assert "gate       beats_baseline passed" in out
    registry = tmp_path / "home" / "registry" / "churn"
    assert (registry / "v0001").is_dir()
    drift = tmp_path / "home" / "data" / "churn" / "feature_drift"
    assert drift.exists()
    # a second run recomputes nothing
    again = subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle", str(tmp_path / "mlx.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert again.returncode == 0
    assert "nothing to recompute" in again.stdout + again.stderr


def test_dg_scaffold_writes_a_working_instance(tmp_path):
    """`dg scaffold defs mlx_assets.component.MLLifecycle <name>` (the scaffolder behind it)
    writes a defs.yaml that validates and builds with the default composition."""
    from mlx_assets.component.component import MLLifecycleScaffolder

    target = tmp_path / "defs" / "my_model"
    target.mkdir(parents=True)
    MLLifecycleScaffolder().scaffold(
        dg.ScaffoldRequest(
            type_name="mlx_assets.component.MLLifecycle",
            target_path=target,
            scaffold_format="yaml",
            project_root=REPO,
            params=None,
            append=False,
        )
    )
    spec = load_spec(target / "defs.yaml")
    assert spec.name == "my_model" and spec.target.kind == "regression"
    defs = build_definitions(
        load_composition(REPO / "mlx.yaml", environ={}), lifecycles=load_specs(tmp_path / "defs")
    )
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "my_model/registered_model" in keys


def test_the_component_builds_through_dagsters_own_loader():
    """``MLLifecycle.build_defs`` (what ``load_from_defs_folder`` calls) gives the same assets as
    MLX's loader for that instance."""
    from mlx_assets.component.component import MLLifecycle

    _, file = load_specs(only=["seattle_weather"])[0]
    import yaml

    attributes = yaml.safe_load(Path(file).read_text())["attributes"]
    component = MLLifecycle.model_validate(attributes)
    defs = component.build_defs(None)  # type: ignore[arg-type]
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "seattle_weather/registered_model" in keys
    assert "raw_flights" not in keys
