"""The registry finds built-in and third-party plugins without importing their modules."""

from __future__ import annotations

import sys
import textwrap

import pytest

from mlx_plugins.kernel.errors import PluginNotFoundError
from mlx_plugins.kernel.registry import (
    BUILTIN_PLUGINS,
    PluginRegistry,
    PluginSpec,
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
