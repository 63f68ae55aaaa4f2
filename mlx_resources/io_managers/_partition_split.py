"""Assign each row of a frame to one of a run's partition keys (for multi-partition outputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
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
    import polars as pl

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


def missing_partition_values(
    df: pl.DataFrame, partition_expr: str | Mapping[str, str]
) -> dict[str, int]:
    """``{column: rows}`` of the ``partition_expr`` column(s) holding nulls (left out when
    none, or when a column is absent: :func:`assign_partition_keys` names that). Such rows
    belong to no partition; that is an error in the data, not rows to filter away."""
    import polars as pl

    columns = [partition_expr] if isinstance(partition_expr, str) else list(partition_expr.values())
    present = [c for c in columns if c in df.columns]
    if not present or df.height == 0:
        return {}
    counts = df.select(pl.col(c).null_count() for c in present).row(0)
    return {c: int(n) for c, n in zip(present, counts, strict=True) if n}


def _assign_one(
    df: pl.DataFrame, partitions_def: dg.PartitionsDefinition, keys: list[str], column: str
) -> pl.Series:
    import polars as pl

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
    import polars as pl

    lookup = {k: k for k in keys}
    return values.replace_strict(lookup, default=None, return_dtype=pl.String)


def _assign_by_window(
    values: pl.Series, partitions_def: dg.TimeWindowPartitionsDefinition, keys: list[str]
) -> pl.Series:
    """Each row's key by the window its instant falls in.

    Naive values (and Date values, read as midnight) are wall times in the partitions' time
    zone. A wall time that happens twice (the autumn overlap) goes to the earlier instant's
    window when that window is in ``keys``, else to the later one's; a wall time that does not
    exist (the spring-forward gap) is shifted forward by the gap's length, as Spark and Trino
    do (02:30 on a day New York skips 02:00-03:00 is read as 03:30). Time-zone-aware values are
    instants and need no reading.
    """
    import polars as pl

    windows = [(partitions_def.time_window_for_partition_key(k), k) for k in keys]
    if values.dtype == pl.Date and any(
        w.start.time() != datetime.min.time() or w.end.time() != datetime.min.time()
        for w, _ in windows
    ):
        raise SplitError(
            f"column {values.name!r} is a Date but the partitions are shorter than a day; "
            "use a Datetime column as 'partition_expr'"
        )
    # by instant: aware datetimes of one zone compare by wall time, ignoring the DST fold
    spans = sorted(((w.start - _EPOCH) // _US, (w.end - _EPOCH) // _US, k) for w, k in windows)
    starts = pl.Series([s for s, _, _ in spans], dtype=pl.Int64)
    ends = pl.Series([e for _, e, _ in spans], dtype=pl.Int64)
    names = pl.Series([k for _, _, k in spans], dtype=pl.String)

    tz = partitions_def.timezone
    if values.dtype == pl.Date:
        local = values.cast(pl.Datetime("us"))
    else:
        local = values.dt.cast_time_unit("us")
    dtype = local.dtype
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is not None:
        return _key_of(local.dt.epoch("us"), starts, ends, names)
    earliest = local.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    latest = local.dt.replace_time_zone(tz, ambiguous="latest", non_existent="null")
    early_us, late_us = earliest.dt.epoch("us"), latest.dt.epoch("us")
    if int((early_us.is_null() & local.is_not_null()).sum()):
        shifted = _past_the_gap(local, tz)
        early_us, late_us = early_us.fill_null(shifted), late_us.fill_null(shifted)
    first = _key_of(early_us, starts, ends, names)
    return first.fill_null(_key_of(late_us, starts, ends, names))


_GAP_PROBES = (timedelta(hours=1), timedelta(hours=3), timedelta(days=1), timedelta(days=2))
"""How far before a non-existent wall time to look for the UTC offset in force before the gap
(gaps are 30 minutes to 24 hours; the shortest probe that lands on an existing time wins)."""


def _past_the_gap(local: pl.Series, tz: str) -> pl.Series:
    """Microseconds since the epoch of naive wall times ``local`` read with the UTC offset in
    force just before each one: for a wall time inside a spring-forward gap that is the time
    shifted forward by the gap's length; null where no probe finds an existing time."""
    import polars as pl

    wall_us = local.dt.epoch("us")
    offsets = []
    for probe in _GAP_PROBES:
        before = local - probe
        aware = before.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
        offsets.append(before.dt.epoch("us") - aware.dt.epoch("us"))
    offset = pl.select(pl.coalesce(offsets)).to_series()
    return wall_us - offset


def _key_of(epoch: pl.Series, starts: pl.Series, ends: pl.Series, names: pl.Series) -> pl.Series:
    """The name of the ``[start, end)`` span holding each epoch (sorted, disjoint spans), null
    for epochs in none of them and for null epochs."""
    import polars as pl

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
