"""Assign each row of a frame to one of a run's partition keys (for multi-partition outputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class SplitError(ValueError):
    """The frame can't be split by the configured ``partition_expr`` (the message says why)."""


def assign_partition_keys(
    df: pl.DataFrame,
    partitions_def: dg.PartitionsDefinition,
    keys: Sequence[str],
    partition_expr: str | Mapping[str, str],
) -> pl.Series:
    """A String series: the partition key (one of ``keys``) of each row, null for rows outside.

    Time-window partitions with a Date/Datetime column map rows by window (naive values are read
    in the partitions' timezone); any other column is cast to String and matched against the keys.
    Multi-dimensional partitions need ``partition_expr`` as ``{dimension: column}``.
    """
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        if not isinstance(partition_expr, Mapping):
            example = {d.name: "<column>" for d in partitions_def.partitions_defs}
            raise SplitError(
                "partitions are multi-dimensional, so metadata 'partition_expr' must map each "
                f"dimension to a column, e.g. {example}, not {partition_expr!r}"
            )
        mkeys = [
            k
            if isinstance(k, dg.MultiPartitionKey)
            else partitions_def.get_partition_key_from_str(k)
            for k in keys
        ]
        per_dim: list[pl.Series] = []
        # MultiPartitionKey's string form joins the dimension keys with '|' in dimension-name order.
        for dim in sorted(partitions_def.partitions_defs, key=lambda d: d.name):
            if dim.name not in partition_expr:
                raise SplitError(
                    f"metadata 'partition_expr' has no column for dimension {dim.name!r} "
                    f"(got {dict(partition_expr)})"
                )
            dim_keys = sorted({mk.keys_by_dimension[dim.name] for mk in mkeys})
            per_dim.append(_assign_one(df, dim.partitions_def, dim_keys, partition_expr[dim.name]))
        combined = pl.select(pl.concat_str(per_dim, separator="|")).to_series()
        return _keep_only(combined, [str(k) for k in mkeys])
    if not isinstance(partition_expr, str):
        raise SplitError(
            f"metadata 'partition_expr' must be a column name for one-dimensional partitions, "
            f"got {partition_expr!r}"
        )
    return _assign_one(df, partitions_def, list(keys), partition_expr)


def _assign_one(
    df: pl.DataFrame, partitions_def: dg.PartitionsDefinition, keys: list[str], column: str
) -> pl.Series:
    if column not in df.columns:
        raise SplitError(
            f"the frame has no column {column!r} named by metadata 'partition_expr' "
            f"(columns: {df.columns})"
        )
    values = df.get_column(column)
    temporal = values.dtype == pl.Date or isinstance(values.dtype, pl.Datetime)
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition) and temporal:
        return _assign_by_window(values, partitions_def, keys)
    return _keep_only(values.cast(pl.String), keys)


def _keep_only(values: pl.Series, keys: list[str]) -> pl.Series:
    lookup = {k: k for k in keys}
    return values.replace_strict(lookup, default=None, return_dtype=pl.String)


def _assign_by_window(
    values: pl.Series, partitions_def: dg.TimeWindowPartitionsDefinition, keys: list[str]
) -> pl.Series:
    windows = sorted(
        ((partitions_def.time_window_for_partition_key(k), k) for k in keys),
        key=lambda wk: wk[0].start,
    )
    if values.dtype == pl.Date and any(
        w.start.time() != datetime.min.time() or w.end.time() != datetime.min.time()
        for w, _ in windows
    ):
        raise SplitError(
            f"column {values.name!r} is a Date but the partitions are shorter than a day; "
            "use a Datetime column as 'partition_expr'"
        )
    tz = partitions_def.timezone
    if values.dtype == pl.Date:
        local = values.cast(pl.Datetime("us"))
    else:
        local = values.dt.cast_time_unit("us")
    dtype = local.dtype
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is None:
        local = local.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    epoch = local.dt.epoch("us")

    starts = pl.Series([(w.start - _EPOCH) // _US for w, _ in windows], dtype=pl.Int64)
    ends = pl.Series([(w.end - _EPOCH) // _US for w, _ in windows], dtype=pl.Int64)
    names = pl.Series([k for _, k in windows], dtype=pl.String)
    frame = pl.DataFrame({"epoch": epoch})
    idx = (starts.search_sorted(epoch.fill_null(0), side="right").cast(pl.Int64) - 1).clip(0)
    frame = frame.with_columns(
        start=starts.gather(idx), end=ends.gather(idx), key=names.gather(idx)
    )
    return frame.select(
        pl.when(
            pl.col("epoch").is_not_null()
            & (pl.col("epoch") >= pl.col("start"))
            & (pl.col("epoch") < pl.col("end"))
        ).then(pl.col("key"))
    ).to_series()
