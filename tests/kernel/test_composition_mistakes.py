"""Composition mistakes that used to be accepted or raw (issue 9 item 13): each is refused at
load with the file, the key and a fix a person can act on."""

from __future__ import annotations

import pytest

from mlx_assets.build import build_definitions
from mlx_plugins.kernel.composition import load_composition
from mlx_plugins.kernel.errors import CompositionError

BASE = """
plugins:
  data_source: [{name: flights, plugin: nycflights13}]
  ml_platform: {plugin: local_torch, config: {epochs: 2}}
  drift_detector: polars
"""


def _error(tmp_path, text: str, environ=None, build: bool = False) -> CompositionError:
    path = tmp_path / "mlx.yaml"
    path.write_text(text)
    with pytest.raises(CompositionError) as info:
        comp = load_composition(path, environ=environ or {})
        if build:
            build_definitions(comp)
    err = info.value
    assert str(path) in str(err), "the error names the file"
    assert err.fix and "fix:" in str(err)
    return err


@pytest.mark.parametrize(
    ("field", "value", "fix"),
    [
        ("epochs", "true", "whole number"),  # was silently 1
        ("epochs", "false", "whole number"),  # was silently 0
        ("epochs", "'6'", "whole number"),  # a quoted number is text
        ("epochs", "6.0", "whole number"),
        ("learning_rate", "true", "number (float)"),
        ("compile", "1", "true or false"),  # was silently True
        ("compile", "'false'", "true or false"),
        ("device", "5", "text (str)"),
    ],
)
def test_scalars_are_strict(tmp_path, field, value, fix):
    err = _error(tmp_path, BASE.replace("{epochs: 2}", f"{{{field}: {value}}}"))
    assert err.key == f"plugins.ml_platform.config.{field}"
    assert "(got " in err.problem
    assert fix in err.fix


def test_bool_for_int_names_the_bool(tmp_path):
    err = _error(tmp_path, BASE.replace("{epochs: 2}", "{epochs: true}"))
    assert "(got True)" in err.problem


def test_int_for_float_is_fine(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE.replace("{epochs: 2}", "{learning_rate: 1}"))
    comp = load_composition(path, environ={})
    assert comp.of_kind("ml_platform")[0].config == {"learning_rate": 1}


def test_misspelled_plugin_field_suggests_the_closest(tmp_path):
    err = _error(tmp_path, BASE.replace("{epochs: 2}", "{epoch: 2}"))
    assert err.key == "plugins.ml_platform.config.epoch"
    assert "did you mean 'epochs'?" in err.problem


@pytest.mark.parametrize(
    ("settings", "key", "suggestion"),
    [
        ("  lifecycle: [a]\n", "settings.lifecycle", "lifecycles"),
        ("  window: {train_strt: 2013-01-01}\n", "settings.window.train_strt", "train_start"),
        ("  drift: {cooldown_minute: 5}\n", "settings.drift.cooldown_minute", "cooldown_minutes"),
        ("  quality_gate: {min_auc: 0.7}\n", "settings.quality_gate.min_auc", "min_roc_auc"),
    ],
)
def test_misspelled_settings_key_is_refused_with_a_suggestion(tmp_path, settings, key, suggestion):
    err = _error(tmp_path, BASE + "settings:\n" + settings, build=True)
    assert err.key == key
    assert f"did you mean {suggestion!r}?" in err.problem
    assert suggestion in err.fix


@pytest.mark.parametrize("cron", ["every minute", "61 * * * *", "* * * *", "@sometimes"])
def test_bad_arrival_cron_is_one_clear_error(tmp_path, cron):
    err = _error(tmp_path, BASE + f"settings:\n  arrival_cron: '{cron}'\n", build=True)
    assert err.key == "settings.arrival_cron"
    assert f"{cron!r} is not a cron schedule" in err.problem
    assert "five fields" in err.fix and "'*/5 * * * *'" in err.fix
    assert "Traceback" not in str(err)


@pytest.mark.parametrize("cron", ["*/5 * * * *", "@daily", "0 6 * * 1-5"])
def test_good_arrival_cron_is_accepted(tmp_path, cron):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE + f"settings:\n  arrival_cron: '{cron}'\n")
    defs = build_definitions(load_composition(path, environ={}))
    assert defs.resolve_schedule_def("arrival").cron_schedule == cron


def test_settings_scalars_are_strict(tmp_path):
    err = _error(tmp_path, BASE + "settings:\n  window: {valid_days: true}\n", build=True)
    assert err.key == "settings.window.valid_days"
    assert "whole number" in err.fix
    err = _error(
        tmp_path, BASE + "settings:\n  drift: {retrain_on_dataset_drift: off}\n", build=True
    )
    assert err.key == "settings.drift.retrain_on_dataset_drift"
    assert "only true and false are booleans" in err.problem


def test_nested_settings_model_fix_lists_fields_and_an_example(tmp_path):
    err = _error(tmp_path, BASE + "settings:\n  window: 2013-01-01\n", build=True)
    assert err.key == "settings.window"
    assert "TrainingWindow" not in err.fix, "a class name is not a fix a person can act on"
    for field in ("train_start", "train_end", "valid_days", "test_start", "test_end"):
        assert field in err.fix
    assert "e.g. {train_start: 2013-01-01" in err.fix


def test_literal_fix_lists_the_choices(tmp_path):
    err = _error(tmp_path, BASE.replace("{epochs: 2}", "{distributed: sometimes}"))
    assert err.key == "plugins.ml_platform.config.distributed"
    assert err.fix == "write one of: 'auto', 'off', 'always'"


@pytest.mark.parametrize(
    ("var", "value", "kind", "field", "expected"),
    [
        (
            "MLX__PLUGINS__DRIFT_DETECTOR__CONFIG__DRIFT_SHARE",
            "0.4",
            "drift_detector",
            "drift_share",
            0.4,
        ),
        (
            "MLX__PLUGINS__ML_PLATFORM__CONFIG__DISTRIBUTED",
            "off",
            "ml_platform",
            "distributed",
            "off",
        ),
    ],
)
def test_env_override_under_a_shorthand_entry(tmp_path, var, value, kind, field, expected):
    """``drift_detector: polars`` is expanded to {plugin: polars} before overrides apply."""
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE.replace("{plugin: local_torch, config: {epochs: 2}}", "local_torch"))
    comp = load_composition(path, environ={var: value})
    entry = comp.of_kind(kind)[0]
    assert entry.plugin in ("polars", "local_torch")
    assert entry.config == {field: expected}


def test_env_override_into_a_shorthand_list_item(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE.replace("[{name: flights, plugin: nycflights13}]", "[nycflights13]"))
    comp = load_composition(path, environ={"MLX__PLUGINS__DATA_SOURCE__0__NAME": "flights"})
    assert [e.name for e in comp.of_kind("data_source")] == ["flights"]


def test_env_override_into_a_scalar_names_the_variable_and_the_real_path(tmp_path):
    err = _error(
        tmp_path,
        BASE + "settings:\n  model_name: x\n",
        environ={"MLX__SETTINGS__MODEL_NAME__SUFFIX": "y"},
    )
    assert "MLX__SETTINGS__MODEL_NAME__SUFFIX" in err.problem
    assert "settings.model_name, which is a str" in err.problem
    assert "MLX__SETTINGS__MODEL_NAME" in err.fix


def test_env_override_bad_list_index(tmp_path):
    err = _error(tmp_path, BASE, environ={"MLX__PLUGINS__DATA_SOURCE__3__CONFIG__SCALE": "2"})
    assert err.key == "plugins.data_source"
    assert "not an index of this list of 1" in err.problem
    assert "MLX__PLUGINS__DATA_SOURCE__0__" in err.fix


def test_an_unknown_key_in_nested_plugin_config_is_a_clear_error_not_a_traceback(tmp_path):
    """Seen: `colums:` under a Snowflake read_tables entry ended in DagsterInvalidConfigError's
    traceback in `mlx config validate` and `mlx health`; `new_cluster: {num_worker: 8}` was
    accepted silently (training would have run on the default cluster)."""
    pytest.importorskip("dagster_snowflake")
    path = tmp_path / "mlx.yaml"
    path.write_text(
        BASE.replace(
            "[{name: flights, plugin: nycflights13}]",
            "[{name: flights, plugin: nycflights13}, {name: wh, plugin: snowflake, config: "
            "{account: a, user: u, password: {env: SF_PW}, database: D, schema_name: P, "
            "read_tables: {t: {table: t, date_column: day, colums: [a]}}}}]",
        )
    )
    with pytest.raises(CompositionError) as err:
        load_composition(path, environ={"SF_PW": "pw-not-shown"})
    assert err.value.key == "plugins.data_source[1].config.read_tables.t.colums"
    assert "did you mean 'columns'" in err.value.problem and "Traceback" not in str(err.value)
    assert "pw-not-shown" not in str(err.value)


def test_a_profile_that_switches_a_plugin_replaces_its_config(tmp_path):
    """Seen: the README's prod profile (local_torch -> databricks) failed with
    'epochs: unknown config field for plugin databricks', the base's key carried over."""
    pytest.importorskip("dagster_databricks")
    path = tmp_path / "mlx.yaml"
    path.write_text(
        "plugins:\n"
        "  data_source: [{name: flights, plugin: nycflights13}]\n"
        "  ml_platform: {plugin: local_torch, config: {epochs: 6}}\n"
        "  drift_detector: polars\n"
        "profiles:\n"
        "  prod:\n"
        "    plugins:\n"
        "      ml_platform:\n"
        "        plugin: databricks\n"
        "        config: {host: 'https://adb-1.azuredatabricks.net', token: {env: DBX}}\n"
        "  smoke:\n"
        "    plugins:\n"
        "      ml_platform: {config: {hidden: [8]}}\n"
    )
    prod = load_composition(path, profile="prod", environ={"DBX": "t"})
    (entry,) = prod.of_kind("ml_platform")
    assert entry.plugin == "databricks" and "epochs" not in entry.config
    smoke = load_composition(path, profile="smoke", environ={})
    (entry,) = smoke.of_kind("ml_platform")
    assert entry.config == {"epochs": 6, "hidden": [8]}  # same plugin: merged


def test_credentials_written_into_storage_options_are_not_echoed_in_the_error(tmp_path):
    """Seen: `storage_options: "key=AKIA secret=..."` was printed back in the error."""
    path = tmp_path / "mlx.yaml"
    path.write_text(
        BASE.replace(
            "[{name: flights, plugin: nycflights13}]",
            "[{name: flights, plugin: nycflights13}, {name: lake, plugin: files, config: "
            "{files: {t: {path: 's3://b/t/'}}, storage_options: 'key=AKIA secret=hunter2xyz'}}]",
        )
    )
    with pytest.raises(CompositionError) as err:
        load_composition(path, environ={})
    assert err.value.key == "plugins.data_source[1].config.storage_options"
    assert "hunter2xyz" not in str(err.value) and "AKIA" not in str(err.value)


SNOWFLAKE = (
    "{name: wh, plugin: snowflake, config: {account: acct, user: U, database: DB, "
    "read_tables: {t: {table: T}}, password: %s}}"
)


@pytest.mark.parametrize(
    ("entry", "key", "var"),
    [
        # a secret field given as text (Snowflake's password)
        (
            SNOWFLAKE % "'hunter2-literal'",
            "plugins.data_source[1].config.password",
            "SNOWFLAKE_PASSWORD",
        ),
        # a credential key inside a secret mapping (fsspec storage_options)
        (
            "{name: lake, plugin: files, config: {files: {t: {path: 's3://b/t/'}}, "
            "storage_options: {endpoint_url: 'http://127.0.0.1:9', secret: 'hunter2-literal'}}}",
            "plugins.data_source[1].config.storage_options.secret",
            "FILES_SECRET",
        ),
    ],
)
def test_a_secret_written_in_the_file_is_refused_without_echoing_it(tmp_path, entry, key, var):
    err = _error(
        tmp_path,
        BASE.replace(
            "[{name: flights, plugin: nycflights13}]",
            f"[{{name: flights, plugin: nycflights13}}, {entry}]",
        ),
    )
    assert err.key == key
    assert "secret is written in the file" in err.problem
    assert f"{{env: {var}}}" in err.fix
    assert "hunter2-literal" not in str(err)


def test_secrets_from_the_environment_and_plain_options_are_accepted(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(
        BASE.replace(
            "[{name: flights, plugin: nycflights13}]",
            "[{name: flights, plugin: nycflights13}, "
            + SNOWFLAKE % "{env: SF_PW}"
            + ", {name: lake, plugin: files, config: {files: {t: {path: 's3://b/t/'}}, "
            "storage_options: {endpoint_url: 'http://127.0.0.1:9', region: eu-west-1, "
            "secret: {env: S3_SECRET}}}}]",
        )
    )
    comp = load_composition(path, environ={"SF_PW": "pw-from-env", "S3_SECRET": "s3-from-env"})
    assert [e.plugin for e in comp.of_kind("data_source")] == ["nycflights13", "snowflake", "files"]


@pytest.mark.parametrize(
    ("nested", "key"),
    [
        ("new_cluster: {num_workers: '2'}", "plugins.ml_platform.config.new_cluster.num_workers"),
        ("new_cluster: {num_workers: true}", "plugins.ml_platform.config.new_cluster.num_workers"),
        ("new_cluster: {node_type_id: 5}", "plugins.ml_platform.config.new_cluster.node_type_id"),
    ],
)
def test_scalars_inside_nested_plugin_config_are_strict(tmp_path, nested, key):
    """Seen: `new_cluster: {num_workers: "2"}` was coerced to 2 while the same text for a
    plugin's own `epochs` was refused: nested config models follow the same rule now."""
    pytest.importorskip("dagster_databricks")
    err = _error(
        tmp_path,
        BASE.replace(
            "{plugin: local_torch, config: {epochs: 2}}",
            "{plugin: databricks, config: {host: 'https://adb-1.2.azuredatabricks.net', "
            f"token: {{env: DBX}}, {nested}}}}}",
        ),
        environ={"DBX": "dapi-not-shown"},
    )
    assert err.key == key
    assert "(got " in err.problem
    assert "dapi-not-shown" not in str(err)


@pytest.mark.parametrize(
    "pasted",
    ["sk-proj-abcdefghijklmnop0123", "AKIAABCDEFGHIJKLMNOP", "dapi0123456789abcdef0123456789ab"],
)
def test_a_credential_pasted_into_a_non_secret_field_is_not_echoed(tmp_path, pasted):
    """Seen in a trial: `batch_size: "sk-proj-..."` printed the key back in the error (and in
    the composition_error sensor's description)."""
    err = _error(tmp_path, BASE.replace("{epochs: 2}", f"{{batch_size: '{pasted}'}}"))
    assert err.key == "plugins.ml_platform.config.batch_size"
    assert pasted not in str(err) and "looks like a credential" in err.problem


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize(
    ("block", "key"),
    [
        ("llm: {cache_size_mb: %s}", "settings.llm.cache_size_mb"),  # was int(inf) at run time
        ("llm: {backoff_max_s: %s}", "settings.llm.backoff_max_s"),
        ("drift: {cooldown_minutes: %s}", "settings.drift.cooldown_minutes"),
        ("quality_gate: {max_log_loss_ratio: %s}", "settings.quality_gate.max_log_loss_ratio"),
    ],
)
def test_non_finite_settings_numbers_are_refused(tmp_path, value, block, key):
    err = _error(tmp_path, BASE + "settings:\n  " + block % value + "\n", build=True)
    assert err.key == key
    assert "finite number" in err.problem + err.fix


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_non_finite_plugin_numbers_are_refused(tmp_path, value):
    err = _error(tmp_path, BASE.replace("{epochs: 2}", f"{{learning_rate: {value}}}"))
    assert err.key == "plugins.ml_platform.config.learning_rate"
    assert "finite number" in err.problem and "finite number (float)" in err.fix


def test_a_long_block_of_the_wrong_shape_gets_a_short_fix(tmp_path):
    """``settings.llm: 5``: the fix names the block's first keys and their count, not all 23
    with their types and defaults."""
    err = _error(tmp_path, BASE + "settings:\n  llm: 5\n", build=True)
    assert err.key == "settings.llm"
    assert len(err.fix) < 300, err.fix
    assert "max_concurrency" in err.fix and "every one optional" in err.fix
    assert "e.g. {max_concurrency: 16" in err.fix
    short = _error(tmp_path, BASE + "settings:\n  window: 5\n", build=True)
    assert "valid_days (int, default 30)" in short.fix  # a short block still lists every key
