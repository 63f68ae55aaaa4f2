"""Raw tables: one asset per table of a lifecycle instance's data source (``data.tables``).

A partitioned table is read a day range at a time (the instance's daily partitions, by its time
column); a reference table (``partitioned: false``) is read whole. Both are checked before they
are returned: a failed blocking check stores nothing.
"""

from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import dagster as dg

from mlx_assets.component.spec import Lifecycle, TableSpec
from mlx_assets.ingest.source_errors import read_or_fail
from mlx_assets.partitions import SINGLE_RUN
from mlx_assets.versioning import code_version
from mlx_plugins.data_sources.base import DataSource
from mlx_resources.io_managers.frames import DataFrame

if TYPE_CHECKING:
    import polars as pl


CODE_VERSION = code_version(__file__)
SOURCE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
"""Transient read errors (timeouts, dropped connections) are retried with exponential backoff
and jitter; permanent ones fail at once (``source_errors.read_or_fail``), as do failed checks."""


def key_columns(table: TableSpec, time_column: str) -> tuple[str, ...]:
    """The columns the ``no_null_keys`` check covers: the time column, then the table's keys."""
    return (time_column, *(c for c in table.key_columns if c != time_column))


def _checks(asset: dg.AssetKey, keys: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "schema_matches_source",
            asset=asset,
            blocking=True,
            description="Columns and dtypes equal the data source's schema.",
        ),
        dg.AssetCheckSpec(
            "no_null_keys",
            asset=asset,
            blocking=True,
            description=f"No nulls in {', '.join(keys)}.",
        ),
    ]


def _null_keys_by_day(
    df: "pl.DataFrame", key_cols: tuple[str, ...]
) -> tuple[int, dict[str, dict[str, int]]]:
    """``(rows without a date, {day: {key column: null count}})`` for the key columns; the
    first of ``key_cols`` is the time column."""
    import polars as pl

    date_col = key_cols[0]
    keys = [c for c in key_cols[1:] if c in df.columns]
    if date_col not in df.columns:
        return 0, {}
    no_date = int(df.get_column(date_col).null_count())
    dated = df.filter(pl.col(date_col).is_not_null())
    if not keys or dated.height == 0:
        return no_date, {}
    per_day = (
        dated.group_by(date_col)
        .agg(pl.col(c).null_count().alias(c) for c in keys)
        .filter(pl.any_horizontal(pl.col(c) > 0 for c in keys))
        .sort(date_col)
    )
    return no_date, {
        str(row[date_col]): {c: int(row[c]) for c in keys if row[c]}
        for row in per_day.iter_rows(named=True)
    }


def _describe_days(per_day: dict[str, dict[str, int]], limit: int = 10) -> str:
    days = [
        f"{day} ({', '.join(f'{c}: {n}' for c, n in cols.items())})"
        for day, cols in list(per_day.items())[:limit]
    ]
    more = f" and {len(per_day) - limit} more day(s)" if len(per_day) > limit else ""
    return "; ".join(days) + more


def validate_source_frame(
    context: dg.AssetExecutionContext,
    asset: dg.AssetKey,
    df: "pl.DataFrame",
    expected: "dict[str, pl.DataType]",
    source: str,
    key_cols: tuple[str, ...],
    table: str,
) -> tuple[list[dg.AssetCheckResult], str | None]:
    """The two blocking checks of a raw table, evaluated BEFORE the frame is returned.

    Returns the check results (the visible record in the UI) and, when one failed, the error
    for the run: it names the run, the asset, each bad day with its columns and counts, and
    the fix. Rows without a date belong to no day: that is a source error, and the fix says
    so (dropping rows would hide it).
    """
    import polars as pl

    actual = dict(df.schema)
    diff = {
        c: f"{actual.get(c)} != {expected.get(c)}"
        for c in set(actual) | set(expected)
        if str(actual.get(c)) != str(expected.get(c))
    }
    no_date, per_day = _null_keys_by_day(df, key_cols)
    nulls = df.select(pl.col(c).null_count() for c in key_cols if c in df.columns)
    totals = {c: n for c, n in (nulls.row(0, named=True) if nulls.width else {}).items() if n}
    keys = context.partition_keys
    span = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
    name = asset.to_user_string()
    results = [
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="schema_matches_source",
            passed=not diff,
            metadata={"mismatches": dg.MetadataValue.json(diff), "partitions": span},
            description=None if not diff else f"schema differs from the source's for {span}",
        ),
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="no_null_keys",
            passed=not totals,
            metadata={
                "null_counts": dg.MetadataValue.json(totals),
                "null_counts_by_day": dg.MetadataValue.json(per_day),
                "rows_without_date": no_date,
                "partitions": span,
            },
            description=None
            if not totals
            else f"null keys in {len(per_day)} day(s) of {span}"
            + (f"; {no_date} row(s) without a date" if no_date else ""),
        ),
    ]
    where = f"run {context.run.run_id}, {name} for {span}"
    if diff:
        return results, (
            f"{where}: the table read from data source {source} does not have the schema the "
            f"source declares (column: got != declared): {diff}. Nothing was stored. fix: make "
            f"the source return its declared schema (or update its schema()), then "
            f"re-materialize {name} for {span}."
        )
    problems = []
    if per_day:
        problems.append(f"null key values on {len(per_day)} day(s): {_describe_days(per_day)}")
    if no_date:
        problems.append(
            f"{no_date} row(s) have no date, so they belong to no day (the date column assigns "
            "each row to its daily partition)"
        )
    if problems:
        fix = (
            "repair the source data for the days named (every key column must be filled)"
            if per_day
            else ""
        )
        if no_date:
            fix += (" and " if fix else "") + (
                f"make data source {source} give every row of {table!r} its {key_cols[0]}"
            )
        return results, (
            f"{where}: {'; '.join(problems)}. Key columns: {', '.join(key_cols)}. "
            f"Nothing was stored and no partition was marked materialized. fix: {fix}, then "
            f"re-materialize {name} for those days."
        )
    return results, None


def _source_label(lc: Lifecycle, plugin: DataSource) -> str:
    return f"{lc.spec.data.source!r} ({type(plugin).__name__})"


def _read_window(
    context: dg.AssetExecutionContext, lc: Lifecycle, table: TableSpec
) -> "Iterator[dg.Output[pl.DataFrame] | dg.AssetCheckResult]":
    import polars as pl

    plugin: DataSource = getattr(context.resources, lc.spec.data.source)
    asset = lc.raw_keys[table.name]
    window = context.partition_time_window
    start, end = window.start.date(), (window.end - timedelta(days=1)).date()
    source = _source_label(lc, plugin)
    name = asset.to_user_string()
    context.log.info(f"reading {table.name} for {start}..{end} from data source {source}")
    what = f"days {start}..{end}"
    df = read_or_fail(
        lambda: plugin.read(table.name, start, end),
        asset=name,
        source=source,
        table=table.name,
        what=what,
    )
    expected = read_or_fail(
        lambda: plugin.schema(table.name),
        asset=name,
        source=source,
        table=table.name,
        what="its schema",
    )
    time_col = lc.spec.data.time_column
    found = df.schema.get(time_col)
    if found != pl.Date:
        have = "has no such column" if found is None else f"has it as {found}"
        raise dg.Failure(
            description=(
                f"lifecycle {lc.name!r} ({lc.source_file or 'its defs.yaml'}): data.time_column "
                f"{time_col!r} cuts the daily partitions, but table {table.name!r} of data source "
                f"{source} {have}, not a Date. fix: set data.time_column to the table's date "
                f"column (columns: {df.columns[:12]}), or make the source return it as a Date "
                "(the files source's date_column parses ISO text and datetimes)"
            ),
            allow_retries=False,
        )
    key_cols = key_columns(table, time_col)
    results, error = validate_source_frame(
        context, asset, df, expected, source, key_cols, table.name
    )
    if error is not None:
        # the checks are the visible record; the Failure keeps the frame from being stored
        yield from results
        raise dg.Failure(
            description=error,
            metadata={r.check_name or "": r.passed for r in results},
            allow_retries=False,
        )
    lineage = plugin.read_lineage(table.name)
    yield dg.Output(df, metadata={"source_read": dg.MetadataValue.json(lineage)} if lineage else {})
    yield from results


def build_raw_assets(lc: Lifecycle) -> list[dg.AssetsDefinition]:
    """One asset per table of ``lc``'s data source.

    Partitioned tables are daily-partitioned copies (a range of days is read in one go) whose
    frame is checked (schema, null keys) before it is returned: a failed blocking check fails
    the step with a ``dg.Failure`` naming the run, the days, columns and counts, so nothing is
    stored or marked materialized; the check results are still recorded. Reference tables are
    read whole.
    """
    return [
        _daily_raw_asset(lc, t) if t.partitioned else _reference_asset(lc, t)
        for t in lc.spec.data.tables
    ]


def _daily_raw_asset(
    lc: Lifecycle, table: TableSpec, retry_policy: dg.RetryPolicy = SOURCE_RETRY
) -> dg.AssetsDefinition:
    key = lc.raw_keys[table.name]
    time_column = lc.spec.data.time_column

    @dg.asset(
        key=key,
        group_name=lc.group,
        kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
        code_version=CODE_VERSION,
        description=table.description
        or f"Table {table.name!r} of data source {lc.spec.data.source!r}, by day.",
        metadata={"partition_expr": time_column},
        check_specs=_checks(key, key_columns(table, time_column)),
        partitions_def=lc.partitions_def,
        backfill_policy=SINGLE_RUN,
        retry_policy=retry_policy,
        required_resource_keys={lc.spec.data.source},
    )
    def _raw(context: dg.AssetExecutionContext):
        yield from _read_window(context, lc, table)

    return _raw


def _reference_asset(lc: Lifecycle, table: TableSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=lc.raw_keys[table.name],
        group_name=lc.group,
        kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
        code_version=CODE_VERSION,
        retry_policy=SOURCE_RETRY,
        description=table.description
        or f"Table {table.name!r} of data source {lc.spec.data.source!r} (reference table).",
        required_resource_keys={lc.spec.data.source},
    )
    def _reference(context: dg.AssetExecutionContext) -> DataFrame:
        plugin: DataSource = getattr(context.resources, lc.spec.data.source)
        return read_or_fail(
            lambda: plugin.read(table.name),
            asset=lc.raw_keys[table.name].to_user_string(),
            source=_source_label(lc, plugin),
            table=table.name,
            what="the whole table",
        )

    return _reference
