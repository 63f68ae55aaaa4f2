"""The ``data_source`` kind."""

from __future__ import annotations

from abc import abstractmethod
from datetime import date
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from mlx_plugins.kernel.base import MLXPlugin

if TYPE_CHECKING:
    import polars as pl


class TableInfo(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    name: str
    description: str = ""
    partition_column: str | None = None
    """Date column that daily partitions are cut on; ``None`` for reference tables."""


class DataSource(MLXPlugin):
    """Reads tables. Partitioned tables are read for an inclusive date range in one go, so a
    single-run backfill over a year reads the source once rather than 365 times.

    Contract (``mlx_plugins.testing.DataSourceContract``): every declared table reads as a
    polars frame whose schema equals :meth:`schema`; a partitioned table read for one day
    returns rows of that day only; an unknown table is a ``KeyError`` naming it.
    """

    @abstractmethod
    def tables(self) -> dict[str, TableInfo]:
        """The tables this source serves.

        Returns
        -------
        dict[str, TableInfo]
            Table name -> :class:`TableInfo` (``info.name`` equals the key). At least one.
            ``partition_column`` names the ``Date`` column that daily partitions are cut on,
            or is None for an unpartitioned (reference) table.
        """

    @abstractmethod
    def schema(self, table: str) -> dict[str, pl.DataType]:
        """Column name -> polars dtype of ``table``, in column order, exactly as :meth:`read`
        returns it (a partitioned table's ``partition_column`` is ``pl.Date``).

        Parameters
        ----------
        table
            A key of :meth:`tables`.

        Raises
        ------
        KeyError
            No such table; the message names it and the tables there are.
        """

    @abstractmethod
    def read(self, table: str, start: date | None = None, end: date | None = None) -> pl.DataFrame:
        """Rows of ``table``; for a partitioned table, those with ``start <= date <= end``.

        Parameters
        ----------
        table
            A key of :meth:`tables`.
        start, end
            Inclusive bounds on the partition column (``datetime.date``, days in the data's
            own calendar, no time zone); None leaves that side open. Ignored for an
            unpartitioned table.

        Returns
        -------
        polars.DataFrame
            Shape ``(rows, len(schema(table)))``, columns and dtypes exactly
            :meth:`schema`'s; zero rows (same schema) when no day is in the range.

        Raises
        ------
        KeyError
            No such table (``"... has no table 'x'; it has: ..."``).
        ValueError
            Source data that does not match the schema; the message names where (file,
            column) and the expected and found types.
        """

    def read_lineage(self, table: str) -> dict[str, Any] | None:
        """What the last :meth:`read` of ``table`` in this session ran at the source, for a
        model version's lineage: e.g. ``{"sql": ..., "query_id": ...}`` for a warehouse.

        Returns
        -------
        dict or None
            JSON-able, no secrets; None (the default) when the source has nothing to add.
        """
        return None

    def table_info(self, table: str) -> TableInfo:
        tables = self.tables()
        if table not in tables:
            raise KeyError(
                f"{type(self).__name__} has no table {table!r}; it has: {', '.join(tables)}"
            )
        return tables[table]
