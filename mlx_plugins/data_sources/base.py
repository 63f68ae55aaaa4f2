"""The ``data_source`` kind."""

from __future__ import annotations

from abc import abstractmethod
from datetime import date
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from mlx_plugins.kernel.base import MLXPlugin

if TYPE_CHECKING:
    import polars as pl


class TableInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    partition_column: str | None = None
    """Date column that daily partitions are cut on; ``None`` for reference tables."""


class DataSource(MLXPlugin):
    """Reads tables. Partitioned tables are read for an inclusive date range in one go, so a
    single-run backfill over a year reads the source once rather than 365 times."""

    @abstractmethod
    def tables(self) -> dict[str, TableInfo]: ...

    @abstractmethod
    def schema(self, table: str) -> dict[str, pl.DataType]: ...

    @abstractmethod
    def read(self, table: str, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        """Rows of ``table``; for a partitioned table, those with ``start <= date <= end``."""

    def table_info(self, table: str) -> TableInfo:
        tables = self.tables()
        if table not in tables:
            raise KeyError(
                f"{type(self).__name__} has no table {table!r}; it has: {', '.join(tables)}"
            )
        return tables[table]
