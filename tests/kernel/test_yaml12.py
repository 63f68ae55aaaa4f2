"""The composition is read with YAML 1.2 rules: what a person wrote is what the platform gets.

Under PyYAML's YAML 1.1 every value below meant something else (issue 9 item 5).
"""

from __future__ import annotations

import math

import pytest

from mlx_plugins.kernel.composition import load_composition, parse_composition
from mlx_plugins.kernel.errors import CompositionError
from mlx_plugins.kernel.yaml12 import load, load_scalar

BASE = """
plugins:
  data_source: [{name: flights, plugin: nycflights13}]
  ml_platform: {plugin: local_torch, config: {CONFIG}}
  drift_detector: polars
"""


@pytest.mark.parametrize(
    ("written", "read"),
    [
        # YAML 1.1 booleans are text in 1.2
        ("on", "on"),
        ("off", "off"),
        ("yes", "yes"),
        ("no", "no"),
        ("y", "y"),
        ("n", "n"),
        ("Off", "Off"),
        # only true/false (three spellings) are booleans
        ("true", True),
        ("False", False),
        ("TRUE", True),
        # 0123 is decimal, not octal 83; 0o/0x are explicit
        ("0123", 123),
        ("0o17", 15),
        ("0x1F", 31),
        ("-5", -5),
        # no underscores, no base 60, no dates
        ("1_000", "1_000"),
        ("12:30", "12:30"),
        ("190:20:30", "190:20:30"),
        ("2013-01-01", "2013-01-01"),
        ("2013-01-01T10:00:00Z", "2013-01-01T10:00:00Z"),
        # null, ~ and nothing are None
        ("null", None),
        ("~", None),
        ("", None),
        ("'off'", "off"),
        ("1e3", 1000.0),
        ("1.5", 1.5),
    ],
)
def test_scalars_follow_yaml_1_2(written, read):
    assert load(f"v: {written}\n") == {"v": read}
    assert load_scalar(written) == read, "env overrides read the same way as the file"


def test_special_floats():
    data = load("a: .inf\nb: -.inf\nc: .nan\n")
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])


def test_a_repeated_key_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE.replace("{CONFIG}", "{epochs: 2, epochs: 3}"))
    with pytest.raises(CompositionError) as info:
        load_composition(path)
    assert str(path) in str(info.value)
    assert "found the key 'epochs' twice" in info.value.problem
    assert "line 4" in info.value.problem


def _ml_config(tmp_path, config: str, environ=None):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE.replace("{CONFIG}", config))
    comp = load_composition(path, environ=environ or {})
    return comp.of_kind("ml_platform")[0]


def test_distributed_off_is_the_literal_off_in_the_file(tmp_path):
    # Under YAML 1.1 this was False and refused with "give a value of type Literal".
    entry = _ml_config(tmp_path, "{distributed: off}")
    assert entry.config == {"distributed": "off"}
    assert entry.spec.load()(**entry.config).distributed == "off"


def test_distributed_off_through_an_env_override(tmp_path):
    entry = _ml_config(
        tmp_path, "{epochs: 2}", {"MLX__PLUGINS__ML_PLATFORM__CONFIG__DISTRIBUTED": "off"}
    )
    assert entry.config == {"epochs": 2, "distributed": "off"}


def test_env_override_values_are_yaml_1_2(tmp_path):
    entry = _ml_config(
        tmp_path,
        "{epochs: 2}",
        {
            "MLX__PLUGINS__ML_PLATFORM__CONFIG__EPOCHS": "010",
            "MLX__PLUGINS__ML_PLATFORM__CONFIG__SEED": "0o10",
        },
    )
    assert entry.config == {"epochs": 10, "seed": 8}


def test_settings_dates_stay_iso_strings():
    raw = load("settings:\n  window: {train_start: 2013-01-01}\n")
    assert raw["settings"]["window"]["train_start"] == "2013-01-01"
    comp = parse_composition(
        {**load(BASE.replace("{CONFIG}", "{}")), **raw}, environ={}, source="mlx.yaml"
    )
    assert comp.settings == {"window": {"train_start": "2013-01-01"}}


@pytest.mark.parametrize(
    ("config", "key", "in_problem", "in_fix"),
    [
        # a YAML 1.1 boolean word for a bool field: say it is text and what to write
        ("{compile: yes}", "compile", "only true and false are booleans", "true or false"),
        # 1_000 for an int: say to drop the underscores
        ("{epochs: 1_000}", "epochs", "without underscores, e.g. 1000", "whole number"),
        # 12:30 for an int: no base 60
        ("{epochs: '12:30'}", "epochs", "no base-60", "whole number"),
        # empty value: it is null
        ("{epochs: }", "epochs", "an empty value is null", "whole number"),
        ("{epochs: ~}", "epochs", "an empty value is null", "whole number"),
    ],
)
def test_yaml_1_1_habits_get_a_hint(tmp_path, config, key, in_problem, in_fix):
    path = tmp_path / "mlx.yaml"
    path.write_text(BASE.replace("{CONFIG}", config))
    with pytest.raises(CompositionError) as info:
        load_composition(path, environ={})
    err = info.value
    assert str(path) in str(err)
    assert err.key == f"plugins.ml_platform.config.{key}"
    assert in_problem in err.problem
    assert in_fix in err.fix
