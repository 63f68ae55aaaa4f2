"""vega_datasets: real data sets shipped offline inside the ``vega_datasets`` PyPI package.

One table is served: ``seattle_weather``, the daily weather in Seattle from 2012-01-01 to
2015-12-31 (1,461 days, one row per day; NOAA data as packaged by Vega). The package's own
``__init__`` imports pandas; this plugin finds the package's data folder without importing it
and reads the CSV with polars and an explicit schema.
"""

from __future__ import annotations

import functools
import importlib.util
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, PrivateAttr

from mlx_plugins.data_sources.base import DataSource, TableInfo
from mlx_plugins.kernel.metadata import PluginMetadata

if TYPE_CHECKING:
    import polars as pl

_SEATTLE_WEATHER_COLUMNS = {  # column -> polars dtype name (polars is imported on first read)
    "date": "Date",
    "precipitation": "Float64",  # mm
    "temp_max": "Float64",  # degrees Celsius
    "temp_min": "Float64",  # degrees Celsius
    "wind": "Float64",  # m/s
    "weather": "String",  # drizzle | fog | rain | snow | sun
}
FILES = {"seattle_weather": ("seattle-weather.csv", _SEATTLE_WEATHER_COLUMNS)}
"""Table -> (CSV file in the package's data folder, column -> polars dtype name)."""


@functools.cache
def _csv_schema(table: str) -> dict[str, pl.DataType]:
    """The polars schema (column -> dtype instance) of ``table``'s CSV file, built once; callers
    copy it before changing it."""
    import polars as pl

    return {column: getattr(pl, dtype)() for column, dtype in FILES[table][1].items()}


def __getattr__(name: str) -> dict[str, pl.DataType]:
    """``SEATTLE_WEATHER_SCHEMA``: the CSV file's polars schema, built on first access."""
    if name == "SEATTLE_WEATHER_SCHEMA":
        return _csv_schema("seattle_weather")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vega_data_dir() -> Path:
    """The ``_data`` folder of the installed ``vega_datasets`` package (not imported).

    Raises:
        ModuleNotFoundError: the package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec("vega_datasets")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the vega_datasets data source needs the vega_datasets package: pip install "
            "'mlx-platform' (it is a base dependency) or pip install vega_datasets"
        )
    return Path(spec.origin).parent / "_data"


class VegaDatasetsSource(DataSource):
    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="vega_datasets",
        kind="data_source",
        version="1.0.0",
        capabilities=("partitioned:daily", "offline"),
        description="Seattle's daily weather 2012-2015 from the vega_datasets package, offline.",
    )

    data_dir: str | None = Field(
        default=None, description="Folder with the CSV files; defaults to the package's own."
    )

    _tables: dict[str, pl.DataFrame] = PrivateAttr(default_factory=dict)

    def tables(self) -> dict[str, TableInfo]:
        return {
            "seattle_weather": TableInfo(
                name="seattle_weather",
                partition_column="date",
                description="Daily precipitation (mm), max/min temperature (C), wind (m/s) and "
                "the day's weather (drizzle, fog, rain, snow, sun) in Seattle, 2012-2015.",
            )
        }

    def schema(self, table: str) -> dict[str, pl.DataType]:
        self.table_info(table)
        return dict(_csv_schema(table))

    def open(self) -> None:
        self._tables = {}

    def close(self) -> None:
        self._tables = {}

    def _probe(self) -> str:
        folder = self._folder()
        missing = [name for name, _ in FILES.values() if not (folder / name).exists()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}")
        return f"data at {folder}"

    def _folder(self) -> Path:
        return Path(self.data_dir) if self.data_dir else vega_data_dir()

    def _load(self, table: str) -> pl.DataFrame:
        import polars as pl

        if table not in self._tables:
            name, _ = FILES[table]
            self._tables[table] = pl.read_csv(self._folder() / name, schema=_csv_schema(table))
        return self._tables[table]

    def read(self, table: str, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        import polars as pl

        self.table_info(table)
        df = self._load(table)
        if start is not None:
            df = df.filter(pl.col("date") >= start)
        if end is not None:
            df = df.filter(pl.col("date") <= end)
        return df
