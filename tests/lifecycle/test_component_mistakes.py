"""Mistakes in a lifecycle instance (defs.yaml) or in the composition's lifecycle settings, each
as a kind: every input of that shape is a clear error naming the file, the key, the value and the
fix, with no traceback; nothing is silently read as something else or silently skipped."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlx_assets.build import build_definitions, platform_resources
from mlx_assets.cli import main
from mlx_assets.component.loader import check_feature_functions, load_spec, load_specs
from mlx_plugins.kernel.composition import load_composition
from mlx_plugins.kernel.errors import CompositionError

GOOD = """
name: m
data:
  source: flights
  start: 2013-01-01
  tables: [{name: flights}]
features: {numeric: [distance], categorical: [carrier]}
target: {column: arr_delay, kind: regression}
"""

COMPOSITION = """
plugins:
  data_source:
    - {name: flights, plugin: nycflights13}
  ml_platform: local_torch
  drift_detector: polars
"""


T0 = "attributes.data.tables.0"


def _window(train_end: str = "2013-03-01", valid_days: int = 10, start: str = "2013-01-01") -> str:
    return (
        f"window: {{train_start: {start}, train_end: {train_end}, valid_days: {valid_days}, "
        "test_start: 2013-04-01, test_end: 2013-05-01}\ntarget: {"
    )


def _write(folder: Path, name: str, attributes: str) -> Path:
    path = folder / name / "defs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(attributes).strip(), "  ")
    path.write_text(f"type: mlx_assets.component.MLLifecycle\nattributes:\n{body}\n")
    return path


def _error(tmp_path: Path, change: tuple[str, str]) -> tuple[Path, CompositionError]:
    path = _write(tmp_path, "m", GOOD.replace(*change))
    assert change[0] in GOOD
    with pytest.raises(CompositionError) as err:
        load_spec(path)
    return path, err.value


def _composition(tmp_path: Path, settings: str = "", plugins: str = "") -> Path:
    path = tmp_path / "mlx.yaml"
    path.write_text(COMPOSITION + plugins + (f"settings:\n{settings}" if settings else ""))
    return path


def _validate(capsys, path: Path) -> tuple[int, str]:
    rc = main(["config", "validate", str(path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _clean(monkeypatch):
    for k in [k for k in __import__("os").environ if k.startswith("MLX__")]:
        monkeypatch.delenv(k)


# 1. names that become Dagster names ---------------------------------------------------------
BAD_NAMES = [
    (("name: m", 'name: m\ngroup: "my group!"'), "attributes.group", "my group!"),
    (("name: m", "name: m\ngroup: my-group"), "attributes.group", "my-group"),
    (("name: m", "name: m\ngroup: ''"), "attributes.group", "''"),
    (("name: m", 'name: "m\\n"'), "attributes.name", "'m\\n'"),
    (("name: m", "name: m\nkey_prefix: [team, a b]"), "attributes.key_prefix", "a b"),
    (("name: m", "name: m\nkey_prefix: [team-a]"), "attributes.key_prefix", "team-a"),
    (("{name: flights}", "{name: flights, asset: raw x}"), T0 + ".asset", "raw x"),
    (("{name: flights}", "{name: flights, asset: class}"), T0 + ".asset", "class"),
    (("{name: flights}", "{name: my flights}"), T0 + ".name", "raw_my flights"),
    (("{name: flights}", "{name: flights.csv}"), T0 + ".name", "flights.csv"),
    (("features: {", "features: {asset: my-f, "), "attributes.features.asset", "my-f"),
    (("features: {", "features: {asset: input, "), "attributes.features.asset", "input"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "key", "value"), BAD_NAMES)
def test_a_name_dagster_would_refuse_is_a_spec_error(tmp_path, change, key, value):
    path, err = _error(tmp_path, change)
    assert (err.file, err.key) == (str(path), key)
    assert value in err.problem
    assert "letters, digits and underscores" in err.problem or "reserves" in err.problem
    assert err.fix.startswith(("write", "name the asset")) and "correct the value" not in err.fix


@pytest.mark.parametrize(("change", "key", "value"), BAD_NAMES[:1] + BAD_NAMES[6:7])
def test_config_validate_and_lifecycle_print_no_dagster_traceback(
    tmp_path, capsys, monkeypatch, change, key, value
):
    _clean(monkeypatch)
    _write(tmp_path / "defs", "m", GOOD.replace(*change))
    mlx = _composition(tmp_path, "  defs_folder: defs\n")
    rc, out = _validate(capsys, mlx)
    assert rc == 1
    assert "Traceback" not in out and "DagsterInvalidDefinitionError" not in out
    assert key in out and value in out and "fix:" in out
    # `mlx lifecycle` stops at the same error before running anything
    assert main(["lifecycle", str(mlx)]) == 1
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    # an in-process call leaves the environment as it found it (CI: a later module's
    # fixtures ran with this test's composition)
    assert "MLX_COMPOSITION" not in __import__("os").environ


def test_a_valid_group_builds(tmp_path):
    spec = load_spec(_write(tmp_path, "m", GOOD.replace("name: m", "name: m\ngroup: Team_A1")))
    defs = build_definitions(
        load_composition(_composition(tmp_path), environ={}), lifecycles=[(spec, "x")]
    )
    assert defs.resolve_asset_graph().get_all_asset_keys()


# 2. the io_manager slot's config keys ----------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "close"), [("base_pth", "base_path"), ("fromat", "format"), ("bucket", None)]
)
def test_an_unknown_io_manager_config_key_names_it_and_the_closest(tmp_path, field, close):
    path = _composition(
        tmp_path,
        plugins=f"  io_manager: {{plugin: polars_files, config: {{{field}: /tmp/x}}}}\n",
    )
    with pytest.raises(CompositionError) as err:
        platform_resources(load_composition(path, environ={}))
    assert err.value.key == f"plugins.io_manager.config.{field}"
    assert err.value.file == str(path)
    assert (f"did you mean {close!r}" in err.value.problem) == (close is not None)
    assert "base_path" in err.value.fix and "format" in err.value.fix


def test_config_validate_refuses_a_misspelt_io_manager_key(tmp_path, capsys, monkeypatch):
    _clean(monkeypatch)
    path = _composition(
        tmp_path, plugins="  io_manager: {plugin: polars_files, config: {base_pth: /tmp/x}}\n"
    )
    rc, out = _validate(capsys, path)
    assert rc == 1 and "base_pth" in out and "'base_path'" in out and not out.startswith("valid:")


# 3. the defs folder ---------------------------------------------------------------------------
def test_a_missing_defs_folder_is_an_error_naming_the_setting_and_path(tmp_path):
    path = _composition(tmp_path, "  defs_folder: nodefs\n")
    with pytest.raises(CompositionError) as err:
        build_definitions(load_composition(path, environ={}))
    assert err.value.key == "settings.defs_folder" and err.value.file == str(path)
    assert str(tmp_path / "nodefs") in err.value.problem and "'nodefs'" in err.value.problem


def test_a_defs_folder_without_instances_is_an_error(tmp_path):
    (tmp_path / "defs" / "other").mkdir(parents=True)
    path = _composition(tmp_path, "  defs_folder: defs\n")
    with pytest.raises(CompositionError) as err:
        build_definitions(load_composition(path, environ={}))
    assert err.value.key == "settings.defs_folder" and "no <name>/defs.yaml" in err.value.problem


@pytest.mark.parametrize("text", ["", "\n\n", "# to do\n  # later\n", "---\n# nothing yet\n"])
def test_an_empty_or_comment_only_defs_yaml_is_an_error_naming_it(tmp_path, text):
    _write(tmp_path, "a", GOOD)
    empty = tmp_path / "b" / "defs.yaml"
    empty.parent.mkdir()
    empty.write_text(text)
    with pytest.raises(CompositionError) as err:
        load_specs(tmp_path)
    assert err.value.file == str(empty) and "empty" in err.value.problem
    assert "dg scaffold defs" in err.value.fix


def test_lifecycle_with_a_missing_defs_folder_exits_1(tmp_path, capsys, monkeypatch):
    _clean(monkeypatch)
    path = _composition(tmp_path, "  defs_folder: nodefs\n")
    assert main(["lifecycle", str(path)]) == 1
    err = capsys.readouterr().err
    assert "settings.defs_folder" in err and "Traceback" not in err


# 4. features.function is checked by `mlx config validate` --------------------------------------
def test_validate_catches_a_feature_function_missing_from_its_module(tmp_path, capsys, monkeypatch):
    _clean(monkeypatch)
    change = ("features: {", "features: {function: 'mlx_assets.features.seattle_weather:nosuch', ")
    path = _write(tmp_path / "defs", "m", GOOD.replace(*change))
    with pytest.raises(CompositionError) as err:
        check_feature_functions(load_specs(tmp_path / "defs"))
    assert err.value.key == "attributes.features.function" and err.value.file == str(path)
    assert "'nosuch'" in err.value.problem and "build_features" in err.value.fix
    rc, out = _validate(capsys, _composition(tmp_path, "  defs_folder: defs\n"))
    assert rc == 1 and "nosuch" in out and "attributes.features.function" in out


def test_validate_passes_a_feature_function_that_exists(tmp_path, capsys, monkeypatch):
    _clean(monkeypatch)
    change = (
        "features: {",
        "features: {function: 'mlx_assets.features.seattle_weather:build_features', ",
    )
    _write(tmp_path / "defs", "m", GOOD.replace(*change))
    rc, out = _validate(capsys, _composition(tmp_path, "  defs_folder: defs\n"))
    assert rc == 0, out


# 5. strict scalars -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("name: m", 'name: m\ndefault_run: "no"'), "attributes.default_run"),
        (("name: m", "name: m\ndefault_run: 0"), "attributes.default_run"),
        (("name: m", "name: m\ndefault_run: 1"), "attributes.default_run"),
        (("{name: flights}", "{name: flights, partitioned: 'no'}"), T0 + ".partitioned"),
        (("{name: flights}", "{name: flights, partitioned: 0}"), T0 + ".partitioned"),
        (("source: flights", "source: 7"), "attributes.data.source"),
        (("column: arr_delay", "column: 3"), "attributes.target.column"),
        (("[distance]", "[distance, 2]"), "attributes.features.numeric.1"),
        (("regression}", "binary}\ngate: {min: {roc_auc: '0.6'}}"), "attributes.gate.min.roc_auc"),
        (("regression}", "binary}\ngate: {max: {brier: true}}"), "attributes.gate.max.brier"),
    ],
)  # fmt: skip
def test_a_scalar_of_the_wrong_type_is_refused_not_coerced(tmp_path, change, key):
    path, err = _error(tmp_path, change)
    assert err.key == key and err.file == str(path)
    assert "write" in err.fix and "Spec" not in err.fix and "field)" not in err.fix


def test_the_component_does_not_coerce_default_run_either():
    import yaml
    from pydantic import ValidationError

    from mlx_assets.component.component import MLLifecycle

    attributes = yaml.safe_load(GOOD)
    with pytest.raises(ValidationError):
        MLLifecycle.model_validate({**attributes, "default_run": "no"})
    assert (
        MLLifecycle.model_validate({**attributes, "default_run": False}).spec().default_run is False
    )


def test_numbers_dates_and_lists_keep_working(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            "m",
            GOOD.replace("kind: regression}", "kind: binary}\ngate: {min: {roc_auc: 1}}")
            + "default_run: false\nwindow: {train_start: 2013-01-01, train_end: 2013-03-01, "
            "valid_days: 10, test_start: 2013-04-01, test_end: '2013-05-01'}\n",
        )
    )
    assert spec.gate is not None and spec.gate.min == {"roc_auc": 1.0}
    assert spec.default_run is False and spec.window is not None
    assert spec.data.start.isoformat() == "2013-01-01"


def test_class_labels_are_text_and_a_number_gets_the_quoted_fix(tmp_path):
    _, err = _error(tmp_path, ("kind: regression}", "kind: multiclass, classes: [0, 1, 2]}"))
    assert err.key == "attributes.target.classes.0" and "not text" in err.problem
    assert "['0', '1', '2']" in err.fix
    spec = load_spec(
        _write(
            tmp_path,
            "m",
            GOOD.replace("kind: regression}", "kind: multiclass, classes: ['0', '1']}"),
        )
    )
    assert spec.target.classes == ("0", "1")


# 6. wording --------------------------------------------------------------------------------------
def test_a_gate_metric_of_another_task_names_its_key_and_the_allowed_metrics(tmp_path):
    _, err = _error(tmp_path, ("kind: regression}", "kind: binary}\ngate: {max: {accuracy: 0.7}}"))
    assert err.key == "attributes.gate.max.accuracy"
    assert "roc_auc, log_loss, brier, log_loss_ratio" in err.fix
    assert "as said" not in err.fix


def test_a_gate_bound_in_words_asks_for_a_number(tmp_path):
    _, err = _error(tmp_path, ("kind: regression}", "kind: binary}\ngate: {min: {roc_auc: high}}"))
    assert err.key == "attributes.gate.min.roc_auc" and "'high'" in err.problem
    assert "number" in err.fix and "mapping" not in err.fix


@pytest.mark.parametrize("bound", [".inf", "-.inf", ".nan"])
def test_a_gate_bound_that_is_not_finite_is_refused(tmp_path, bound):
    _, err = _error(
        tmp_path, ("kind: regression}", f"kind: binary}}\ngate: {{min: {{roc_auc: {bound}}}}}")
    )
    assert err.key == "attributes.gate.min.roc_auc" and "not a finite number" in err.problem


def test_a_gate_bound_too_large_for_a_float_is_refused_not_a_crash(tmp_path):
    _, err = _error(
        tmp_path, ("kind: regression}", "kind: binary}\ngate: {min: {roc_auc: 1" + "0" * 400 + "}}")
    )
    assert err.key == "attributes.gate.min.roc_auc" and "not a finite number" in err.problem


@pytest.mark.parametrize("block", ["drift: {cooldown_minutes: .inf}", "drift: {warn_share: .nan}"])
def test_an_instance_drift_policy_that_is_not_finite_is_refused(tmp_path, block):
    _, err = _error(tmp_path, ("kind: regression}", f"kind: binary}}\n{block}"))
    assert err.key.startswith("attributes.drift.") and "finite number" in err.problem + err.fix


def test_a_sandbox_without_a_function_says_fix_once(tmp_path):
    _, err = _error(tmp_path, ("features: {", "features: {sandbox: {memory_mb: 512}, "))
    assert err.key == "attributes.features.sandbox"
    assert str(err).count("fix:") == 1 and "features.function" in err.fix


@pytest.mark.parametrize(
    "change",
    [
        ("target: {", _window(start="2013-03-01", train_end="2013-02-01")),
        ("target: {", _window(train_end="2013-01-05", valid_days=30)),
        ("categorical: [carrier]", "categorical: [distance]"),
        ("categorical: [carrier]", "categorical: [carrier], slice_by: dest"),
        ("start: 2013-01-01", "start: 2013-01-01\n  end: 2012-01-01"),
        ("kind: regression", "kind: multiclass"),
    ],
)  # fmt: skip
def test_fixes_name_no_internal_class(tmp_path, change):
    _, err = _error(tmp_path, change)
    assert "field)" not in err.fix and "Spec" not in err.fix and "Window" not in err.fix
    assert str(err).count("fix:") == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("start: 2013-01-01", "start: 2024-02-30"), "attributes.data.start"),
        (("start: 2013-01-01", "start: 2013-01-01\n  end: 2013-04-31"), "attributes.data.end"),
        (("target: {", _window(train_end="2013-02-29")), "attributes.window.train_end"),
    ],
)  # fmt: skip
def test_an_iso_date_that_is_no_real_day_is_said_so(tmp_path, change, key):
    _, err = _error(tmp_path, change)
    assert err.key == key and "not a real day" in err.problem
    assert "is text" not in err.problem
