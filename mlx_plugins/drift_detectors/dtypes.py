"""Which dtypes a drift column may have on each side, and the one float64 scale numbers,
instants, durations and times of day are compared on.

A numeric column is compared on float64 values. Polars stores temporal values as integers
whose meaning depends on the logical type (``Datetime("us")`` counts microseconds,
``Datetime("ns")`` nanoseconds, ``Date`` days), so comparing the stored integers of two sides
in different units compares nonsense. :func:`comparable_float64` maps every temporal value to
nanoseconds (since the Unix epoch in UTC for ``Date`` and ``Datetime``; the length for
``Duration``; since midnight for ``Time``), so one instant or one duration gives the same
float64 whatever its unit or time zone. Pairs that have no common meaning (a naive and a
time-zone-aware datetime, a date and a datetime, a number and a timestamp, ...) are refused by
:func:`check_numeric_pair` before anything is computed, with the column, both dtypes and the
fix.

Imports polars only, when a function is called (not when the module is loaded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

_NS_PER: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000}
_NS_PER_DAY = 86_400 * 1_000_000_000


def numeric_family(dtype: pl.DataType) -> str | None:
    """The family a dtype is compared in as a numeric column, or ``None`` when it cannot be
    numeric: ``"number"`` (integers, floats, decimals, booleans as 0/1), ``"naive datetime"``,
    ``"time-zone-aware datetime"`` (any zone: the instants are compared), ``"date"``,
    ``"duration"``, ``"time of day"``, ``"null"`` (an all-null column, compatible with any)."""
    import polars as pl

    if dtype == pl.Null:
        return "null"
    if isinstance(dtype, pl.Datetime):
        return "naive datetime" if dtype.time_zone is None else "time-zone-aware datetime"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Duration):
        return "duration"
    if dtype == pl.Time:
        return "time of day"
    if dtype.is_numeric() or dtype == pl.Boolean:
        return "number"
    return None


def _fix_for(ref_family: str, cur_family: str, column: str) -> str:
    families = {ref_family, cur_family}
    if families == {"naive datetime", "time-zone-aware datetime"}:
        return (
            f"give both sides a time zone, e.g. pl.col({column!r}).dt.replace_time_zone('UTC') "
            "on the naive side (if its wall times are UTC), or drop it from both with "
            ".dt.replace_time_zone(None)"
        )
    if families == {"date", "naive datetime"} or families == {"date", "time-zone-aware datetime"}:
        return f"cast both sides to one type, e.g. pl.col({column!r}).cast(pl.Date) on both"
    if "number" in families:
        return (
            f"store {column!r} with the same type on both sides (e.g. cast the number to the "
            "temporal type, or convert the temporal side with .dt.epoch(...))"
        )
    return f"cast {column!r} to one dtype on both sides"


def check_numeric_dtype(column: str, side: str, dtype: pl.DataType) -> None:
    """Raise ``TypeError`` naming the column, the side and the dtype when ``dtype`` cannot be
    compared as a numeric column (strings, categoricals, lists, structs, binary, objects)."""
    if numeric_family(dtype) is None:
        raise TypeError(
            f"numeric column {column!r} has dtype {dtype} in the {side}; a numeric drift column "
            "must be a number, boolean, Date, Datetime, Duration or Time. fix: list it under "
            f"categorical, or cast it (pl.col({column!r}).cast(pl.Float64))"
        )


def check_numeric_pair(column: str, reference: pl.DataType, current: pl.DataType) -> None:
    """Raise ``TypeError`` when the two sides of a numeric column cannot be compared on one
    scale: each must pass :func:`check_numeric_dtype`, and both must be of the same
    :func:`numeric_family` (or one of them all-null). Units (ms/us/ns), integer widths,
    floats vs integers vs decimals, and time zones of aware datetimes may differ."""
    check_numeric_dtype(column, "reference", reference)
    check_numeric_dtype(column, "current", current)
    ref_family, cur_family = numeric_family(reference), numeric_family(current)
    assert ref_family is not None and cur_family is not None
    if "null" in (ref_family, cur_family) or ref_family == cur_family:
        return
    raise TypeError(
        f"numeric column {column!r} has dtype {reference} ({ref_family}) in the reference but "
        f"{current} ({cur_family}) in the current: their values have no common scale. fix: "
        + _fix_for(ref_family, cur_family, column)
    )


def _string_like(dtype: pl.DataType) -> bool:
    import polars as pl

    return dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)


def check_categorical_pair(column: str, reference: pl.DataType, current: pl.DataType) -> None:
    """Raise ``TypeError`` when the two sides of a categorical column would render the same
    value as different category strings (categories are compared as strings): allowed are equal
    dtypes, an all-null side, string-like on both sides (String, Categorical, Enum), integers
    of any width on both sides; anything else (``Datetime("us")`` vs ``Datetime("ns")``,
    ``Int64`` vs ``Float64``, ``Boolean`` vs ``String``, ...) names the column, both dtypes and
    the fix."""
    import polars as pl

    if reference == current or pl.Null in (reference, current):
        return
    if _string_like(reference) and _string_like(current):
        return
    if reference.is_integer() and current.is_integer():
        return
    raise TypeError(
        f"categorical column {column!r} has dtype {reference} in the reference but {current} "
        "in the current: categories are compared as text, and the same value would read "
        f"differently on the two sides. fix: cast {column!r} to one dtype on both sides "
        f"(e.g. pl.col({column!r}).cast({reference}))"
    )


def comparable_float64(series: pl.Series) -> pl.Series:
    """``series`` as float64 on its family's common scale (see the module docstring):
    numbers and booleans as they are; ``Datetime`` as nanoseconds since the epoch (UTC, any
    unit and time zone); ``Date`` as nanoseconds since the epoch at midnight; ``Duration`` as
    nanoseconds; ``Time`` as nanoseconds since midnight. Nulls stay null.

    The scaling multiplies the float of the stored integer by a power of ten, so the same
    instant stored in ms, us or ns gives the same float64 (exactly, for values within about
    285 years of 1970 in us and 285,000 years in ms)."""
    import polars as pl

    dtype = series.dtype
    if isinstance(dtype, pl.Datetime | pl.Duration):
        factor = _NS_PER[dtype.time_unit or "us"]
        physical = series.to_physical().cast(pl.Float64)
        return physical * float(factor) if factor != 1 else physical
    if dtype == pl.Date:
        return series.to_physical().cast(pl.Float64) * float(_NS_PER_DAY)
    if dtype == pl.Time:
        return series.to_physical().cast(pl.Float64)
    return series.cast(pl.Float64)
