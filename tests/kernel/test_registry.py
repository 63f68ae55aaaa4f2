"""The registry finds built-in and third-party plugins without importing their modules."""

from __future__ import annotations

import sys
import textwrap

import pytest

import mlx_plugins.kernel.registry as registry_module
from mlx_plugins.kernel.composition import load_composition
from mlx_plugins.kernel.errors import CompositionError, PluginNotFoundError
from mlx_plugins.kernel.registry import (
    BUILTIN_PLUGINS,
    PluginRegistry,
    PluginSpec,
    default_registry,
    discover_entry_points,
)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A real installed distribution on sys.path, declaring a plugin by entry point."""
    pkg = tmp_path / "acme_lake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from typing import ClassVar
        import polars as pl
        from mlx_plugins.data_sources.base import DataSource, TableInfo
        from mlx_plugins.kernel.metadata import PluginMetadata

        IMPORTED = True

        class LakeSource(DataSource):
            metadata: ClassVar[PluginMetadata] = PluginMetadata(
                name="acme_lake", kind="data_source", version="1.2.3", capabilities=("tables",))
            rows: int = 3

            def tables(self):
                return {"t": TableInfo(name="t")}

            def schema(self, table):
                self.table_info(table)
                return {"x": pl.Int64()}

            def read(self, table, start=None, end=None):
                self.table_info(table)
                return pl.DataFrame({"x": list(range(self.rows))}, schema={"x": pl.Int64()})
    """)
    )
    dist = tmp_path / "acme_lake-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-lake\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[mlx.plugins]\ndata_source.acme_lake = acme_lake:LakeSource\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "acme_lake"
    sys.modules.pop("acme_lake", None)


def test_entry_point_plugins_are_discovered_without_import(third_party):
    specs = {(s.kind, s.name): s for s in discover_entry_points()}
    spec = specs[("data_source", "acme_lake")]
    assert spec.target == "acme_lake:LakeSource"
    assert "acme-lake" in spec.origin
    assert "acme_lake" not in sys.modules
    cls = spec.load()
    assert cls.metadata.version == "1.2.3"
    assert "acme_lake" in sys.modules


def test_third_party_plugin_is_usable_in_a_composition(third_party, mlx_composition):
    comp = mlx_composition(
        "plugins:\n  data_source:\n    - {name: flights, plugin: nycflights13}\n"
        "    - {name: lake, plugin: acme_lake, config: {rows: 5}}\n"
        "  ml_platform: local_torch\n  drift_detector: polars\n",
        registry=PluginRegistry([*BUILTIN_PLUGINS, *discover_entry_points()]),
    )
    lake = comp.resources()["lake"]
    assert lake.read("t").height == 5


REST = "  ml_platform: local_torch\n  drift_detector: polars\n"


@pytest.fixture
def scans(monkeypatch):
    """Calls to importlib.metadata.entry_points (the file-system scan) from a fresh default
    registry, as a list of the groups asked for."""
    calls: list[str] = []
    real = registry_module.entry_points

    def counted(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("group"))
        return real(**kwargs)

    monkeypatch.setattr(registry_module, "entry_points", counted)
    default_registry.cache_clear()
    yield calls
    default_registry.cache_clear()


def test_builtin_plugins_load_without_an_entry_point_scan(scans):
    comp = load_composition()  # the repository's mlx.yaml: built-in plugins only
    assert {e.plugin for e in comp.entries} >= {"nycflights13", "local_torch", "polars"}
    assert comp.resources()["flights"].metadata.name == "nycflights13"
    assert scans == []


def test_a_name_not_built_in_is_looked_up_in_the_entry_points(third_party, scans, mlx_composition):
    comp = mlx_composition(
        "plugins:\n  data_source:\n    - {name: flights, plugin: nycflights13}\n"
        "    - {name: lake, plugin: acme_lake, config: {rows: 4}}\n" + REST
    )
    assert comp.resources()["lake"].read("t").height == 4
    assert scans == ["mlx.plugins"]
    mlx_composition("plugins:\n  data_source: {name: lake, plugin: acme_lake}\n" + REST)
    assert scans == ["mlx.plugins"]  # read once per process


def test_an_unknown_name_is_refused_after_the_scan(third_party, scans, mlx_composition):
    with pytest.raises(
        CompositionError,
        match=r"(?s)unknown data_source plugin 'lakee'.*installed.*: acme_lake, files",
    ):
        mlx_composition("plugins:\n  data_source: {name: lake, plugin: lakee}\n" + REST)
    assert scans == ["mlx.plugins"]


def test_listing_the_registry_reads_the_entry_points_and_refuses_a_conflict(
    tmp_path, monkeypatch, scans
):
    dist = tmp_path / "shadow-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mlx.plugins]\ndata_source.nycflights13 = x:Y\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ValueError, match=r"two plugins are registered as data_source\.nycflights13"
    ):
        list(default_registry())
    assert scans == ["mlx.plugins"]


def test_composition_builds_each_plugin_once_and_hands_it_out_once(monkeypatch, mlx_composition):
    import mlx_plugins.kernel.composition as composition_module

    built: list[str] = []
    real = composition_module._instantiate

    def counted(source, entry, key=None, environ=None):  # type: ignore[no-untyped-def]
        built.append(entry.name)
        return real(source, entry, key, environ)

    monkeypatch.setattr(composition_module, "_instantiate", counted)
    monkeypatch.setenv("FLIGHTS_SEED", "3")
    comp = mlx_composition(
        "plugins:\n  data_source:\n    - {name: flights, plugin: nycflights13}\n"
        "    - {name: env_flights, plugin: nycflights13, config: {seed: {env: FLIGHTS_SEED}}}\n"
        + REST
    )
    parsed = sorted(built)
    first = comp.resources()
    # validated while parsing and used as is; an {env:} entry is built again with references
    assert sorted(built) == sorted([*parsed, "env_flights"])
    second = comp.resources()
    assert all(second[k] is not first[k] for k in first)  # never shared between two builds
    assert comp == load_composition(comp.source)  # the kept instances are not part of its value


def test_conflicting_registrations_are_refused():
    a = PluginSpec(kind="data_source", name="x", target="a:A", origin="pkg a")
    b = PluginSpec(kind="data_source", name="x", target="b:B", origin="pkg b")
    with pytest.raises(
        ValueError, match=r"two plugins are registered as data_source\.x.*pkg a.*pkg b"
    ):
        PluginRegistry([a, b])


def test_unknown_kind_in_an_entry_point_is_refused():
    bad = PluginSpec(kind="warehouse", name="x", target="a:A", origin="entry point 'warehouse.x'")
    with pytest.raises(ValueError, match="unknown kind 'warehouse'"):
        PluginRegistry([bad])


def test_get_lists_known_names():
    reg = PluginRegistry(BUILTIN_PLUGINS)
    with pytest.raises(PluginNotFoundError, match="ml_platform plugins: databricks, local_torch"):
        reg.get("ml_platform", "nope")


def test_spec_load_checks_metadata_matches_registration():
    spec = PluginSpec(
        kind="data_source",
        name="other_name",
        target="mlx_plugins.data_sources.nycflights13:NYCFlights13Source",
    )
    with pytest.raises(TypeError, match=r"metadata says data_source\.nycflights13"):
        spec.load()


def test_spec_load_checks_kind_base_class():
    spec = PluginSpec(
        kind="ml_platform",
        name="nycflights13",
        target="mlx_plugins.data_sources.nycflights13:NYCFlights13Source",
    )
    with pytest.raises(TypeError, match="does not subclass"):
        spec.load()
