"""Bad compositions fail with one clear error naming the file, the key and the fix."""

from __future__ import annotations

import pytest

from mlx_plugins.data_sources.base import DataSource
from mlx_plugins.kernel.composition import load_composition, parse_composition
from mlx_plugins.kernel.errors import CompositionError

BASE = """
plugins:
  data_source: [{name: flights, plugin: nycflights13}]
  ml_platform: local_torch
  drift_detector: polars
"""


def _error(tmp_path, text: str, **kw) -> CompositionError:
    path = tmp_path / "mlx.yaml"
    path.write_text(text)
    with pytest.raises(CompositionError) as info:
        load_composition(path, **kw)
    err = info.value
    assert str(path) in str(err), "the error names the file"
    assert "fix:" in str(err)
    return err


def test_valid_base_loads(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE)
    comp = load_composition(path)
    assert {(e.kind, e.name, e.plugin) for e in comp.entries} == {
        ("data_source", "flights", "nycflights13"),
        ("ml_platform", "ml_platform", "local_torch"),
        ("drift_detector", "drift_detector", "polars"),
        ("model_registry", "model_registry", "local"),  # the kind's default: the file names none
    }


def test_unknown_plugin_lists_known_ones(tmp_path):
    err = _error(tmp_path, BASE.replace("ml_platform: local_torch", "ml_platform: sagemaker"))
    assert err.key == "plugins.ml_platform.plugin"
    assert "unknown ml_platform plugin 'sagemaker'" in err.problem
    assert "local_torch" in err.fix


def test_two_ml_platforms_name_both_and_the_rule(tmp_path):
    text = BASE.replace(
        "ml_platform: local_torch",
        "ml_platform: [{plugin: local_torch}, {plugin: local_torch, config: {epochs: 1}}]",
    )
    err = _error(tmp_path, text)
    assert err.key == "plugins.ml_platform"
    assert "exactly one plugin of kind ml_platform" in err.problem
    assert "found 2: 'local_torch', 'local_torch'" in err.problem
    assert "keep one" in err.fix


def test_missing_required_kind(tmp_path):
    err = _error(tmp_path, BASE.replace("  drift_detector: polars\n", ""))
    assert err.key == "plugins.drift_detector"
    assert "found 0" in err.problem
    assert "polars" in err.fix


def test_plugin_of_wrong_kind_in_a_slot(tmp_path):
    err = _error(tmp_path, BASE.replace("ml_platform: local_torch", "ml_platform: nycflights13"))
    assert "plugin 'nycflights13' is a data_source, not a ml_platform" in err.problem
    assert "move it under plugins.data_source" in err.fix


def test_config_field_of_wrong_type(tmp_path):
    err = _error(
        tmp_path,
        BASE.replace(
            "ml_platform: local_torch", "ml_platform: {plugin: local_torch, config: {epochs: many}}"
        ),
    )
    assert err.key == "plugins.ml_platform.config.epochs"
    assert "'many'" in err.problem
    assert "int" in err.fix


def test_unknown_config_field(tmp_path):
    err = _error(
        tmp_path,
        BASE.replace(
            "ml_platform: local_torch", "ml_platform: {plugin: local_torch, config: {epoch: 3}}"
        ),
    )
    assert err.key == "plugins.ml_platform.config.epoch"
    assert "unknown config field" in err.problem
    assert "epochs" in err.fix


def test_unknown_kind_suggests_the_right_slot(tmp_path):
    err = _error(tmp_path, BASE + "  nycflights13: {}\n")
    assert err.key == "plugins.nycflights13"
    assert "data_source" in err.problem


def test_missing_secret_names_the_variable_not_a_value(tmp_path, monkeypatch):
    monkeypatch.delenv("MLX_TEST_DATA_DIR", raising=False)
    text = BASE.replace(
        "{name: flights, plugin: nycflights13}",
        "{name: flights, plugin: nycflights13, config: {data_dir: {env: MLX_TEST_DATA_DIR}}}",
    )
    err = _error(tmp_path, text)
    assert "MLX_TEST_DATA_DIR is not set" in err.problem
    assert "export MLX_TEST_DATA_DIR" in err.fix


def test_secret_value_never_appears_in_errors(tmp_path, monkeypatch):
    secret = "s3cr3t-value-should-not-leak"
    monkeypatch.setenv("MLX_TEST_SEED", secret)
    text = BASE.replace(
        "{name: flights, plugin: nycflights13}",
        "{name: flights, plugin: nycflights13, config: {seed: {env: MLX_TEST_SEED}}}",
    )
    path = tmp_path / "mlx.yaml"
    path.write_text(text)
    try:
        comp = load_composition(path)
        resources = comp.resources()
    except CompositionError as err:
        assert secret not in str(err)
    else:
        # EnvVar is resolved only at run time: the definitions never hold the value.
        assert secret not in repr(resources["flights"])
        assert comp.of_kind("data_source")[0].env_vars == ("MLX_TEST_SEED",)


def test_secret_is_read_at_run_time(tmp_path, monkeypatch):
    import dagster as dg

    secret_dir = tmp_path / "secret-data-dir"
    monkeypatch.setenv("MLX_TEST_DIR", str(secret_dir))
    text = BASE.replace(
        "{name: flights, plugin: nycflights13}",
        "{name: flights, plugin: nycflights13, config: {data_dir: {env: MLX_TEST_DIR}}}",
    )
    path = tmp_path / "mlx.yaml"
    path.write_text(text)
    comp = load_composition(path)
    assert comp.of_kind("data_source")[0].env_vars == ("MLX_TEST_DIR",)
    assert str(secret_dir) not in comp.model_dump_json()
    seen = {}

    @dg.asset
    def probe(flights: DataSource) -> None:
        seen["data_dir"] = flights.data_dir

    result = dg.materialize([probe], resources={"flights": comp.resources()["flights"]})
    assert result.success
    assert seen["data_dir"] == str(secret_dir)


def test_unknown_entry_key(tmp_path):
    err = _error(
        tmp_path,
        BASE.replace("ml_platform: local_torch", "ml_platform: {plugin: local_torch, confg: {}}"),
    )
    assert err.key == "plugins.ml_platform.confg"


def test_unknown_top_level_key(tmp_path):
    err = _error(tmp_path, "plugin:\n  ml_platform: local_torch\n")
    assert err.key == "plugin"
    assert "plugins" in err.fix


def test_invalid_yaml(tmp_path):
    err = _error(tmp_path, "plugins: [unclosed\n")
    assert "not valid YAML" in err.problem
    # the parser's marks name the file, not PyYAML's "<unicode string>"
    assert f'in "{tmp_path / "mlx.yaml"}", line' in err.problem
    assert "<unicode string>" not in err.problem


def test_missing_file_names_the_variable(tmp_path):
    with pytest.raises(CompositionError, match="MLX_COMPOSITION"):
        load_composition(tmp_path / "nope.yaml")


def test_duplicate_names_across_entries(tmp_path):
    text = BASE.replace(
        "[{name: flights, plugin: nycflights13}]",
        "[{name: flights, plugin: nycflights13}, {name: flights, plugin: nycflights13}]",
    )
    err = _error(tmp_path, text)
    assert "share the name 'flights'" in err.problem


def test_profiles_deep_merge_and_env_overrides(tmp_path):
    text = BASE.replace(
        "ml_platform: local_torch",
        "ml_platform: {plugin: local_torch, config: {epochs: 5, seed: 7}}",
    )
    text += "profiles:\n  fast:\n    plugins:\n      ml_platform: {config: {epochs: 1}}\n"
    comp = parse_composition(__import__("yaml").safe_load(text), profile="fast", environ={})
    assert comp.of_kind("ml_platform")[0].config == {"epochs": 1, "seed": 7}
    comp = parse_composition(
        __import__("yaml").safe_load(text),
        environ={"MLX_PROFILE": "fast", "MLX__PLUGINS__ML_PLATFORM__CONFIG__SEED": "11"},
    )
    assert comp.profile == "fast"
    assert comp.of_kind("ml_platform")[0].config == {"epochs": 1, "seed": 11}


def test_unknown_profile_lists_known(tmp_path):
    err = _error(tmp_path, BASE + "profiles:\n  prod: {}\n", profile="staging")
    assert err.key == "profiles.staging"
    assert "prod" in err.fix


def test_env_override_type_error_names_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX__PLUGINS__ML_PLATFORM__CONFIG__EPOCHS", "lots")
    text = BASE.replace("ml_platform: local_torch", "ml_platform: {plugin: local_torch}")
    err = _error(tmp_path, text)
    assert err.key == "plugins.ml_platform.config.epochs"


def test_repository_composition_is_valid():
    comp = load_composition()
    assert comp.source.endswith("mlx.yaml")
    assert [e.plugin for e in comp.of_kind("ml_platform")] == ["local_torch"]
