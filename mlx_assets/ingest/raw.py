"""Raw tables, read from the data source named ``flights``."""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import polars as pl

from mlx_assets.ingest.source_errors import read_or_fail
from mlx_assets.partitions import DAILY_2013, SINGLE_RUN
from mlx_assets.versioning import code_version
from mlx_plugins.data_sources.base import DataSource

CODE_VERSION = code_version(__file__)
SOURCE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
"""Transient read errors (timeouts, dropped connections) are retried with exponential backoff
and jitter; permanent ones fail at once (``source_errors.read_or_fail``), as do failed checks."""
KEY_COLUMNS = {
    "raw_flights": ("date", "carrier", "origin", "dest", "sched_dep_time", "time_hour"),
    "raw_weather": ("date", "origin", "time_hour"),
}


def _checks(asset: str) -> list[dg.AssetCheckSpec]:
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
            description=f"No nulls in {', '.join(KEY_COLUMNS[asset])}.",
        ),
    ]


def _null_keys_by_day(df: pl.DataFrame, asset: str) -> tuple[int, dict[str, dict[str, int]]]:
    """``(rows without a date, {day: {key column: null count}})`` for the key columns."""
    keys = [c for c in KEY_COLUMNS[asset] if c != "date" and c in df.columns]
    if "date" not in df.columns:
        return 0, {}
    no_date = int(df.get_column("date").null_count())
    dated = df.filter(pl.col("date").is_not_null())
    if not keys or dated.height == 0:
        return no_date, {}
    per_day = (
        dated.group_by("date")
        .agg(pl.col(c).null_count().alias(c) for c in keys)
        .filter(pl.any_horizontal(pl.col(c) > 0 for c in keys))
        .sort("date")
    )
    return no_date, {
        str(row["date"]): {c: int(row[c]) for c in keys if row[c]}
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
    asset: str,
    df: pl.DataFrame,
    expected: dict[str, pl.DataType],
    source: str,
) -> tuple[list[dg.AssetCheckResult], str | None]:
    """The two blocking checks of a raw table, evaluated BEFORE the frame is returned.

    Returns the check results (the visible record in the UI) and, when one failed, the error
    for the run: it names the run, the asset, each bad day with its columns and counts, and
    the fix. Rows without a date belong to no day: that is a source error, and the fix says
    so (dropping rows would hide it).
    """
    actual = dict(df.schema)
    diff = {
        c: f"{actual.get(c)} != {expected.get(c)}"
        for c in set(actual) | set(expected)
        if str(actual.get(c)) != str(expected.get(c))
    }
    no_date, per_day = _null_keys_by_day(df, asset)
    nulls = df.select(pl.col(c).null_count() for c in KEY_COLUMNS[asset] if c in df.columns)
    totals = {c: n for c, n in (nulls.row(0, named=True) if nulls.width else {}).items() if n}
    keys = context.partition_keys
    span = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
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
    where = f"run {context.run.run_id}, {asset} for {span}"
    if diff:
        return results, (
            f"{where}: the table read from data source {source} does not have the schema the "
            f"source declares (column: got != declared): {diff}. Nothing was stored. fix: make "
            f"the source return its declared schema (or update its schema()), then "
            f"re-materialize {asset} for {span}."
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
                f"make data source {source} give every row of {asset.removeprefix('raw_')!r} "
                "its date"
            )
        return results, (
            f"{where}: {'; '.join(problems)}. Key columns: {', '.join(KEY_COLUMNS[asset])}. "
            f"Nothing was stored and no partition was marked materialized. fix: {fix}, then "
            f"re-materialize {asset} for those days."
        )
    return results, None


def _read_window(
    context: dg.AssetExecutionContext, flights: DataSource, table: str
) -> Iterator[dg.Output[pl.DataFrame] | dg.AssetCheckResult]:
    asset = f"raw_{table}"
    window = context.partition_time_window
    start, end = window.start.date(), (window.end - timedelta(days=1)).date()
    source = f"'flights' ({type(flights).__name__})"
    context.log.info(f"reading {table} for {start}..{end} from data source {source}")
    what = f"days {start}..{end}"
    df = read_or_fail(
        lambda: flights.read(table, start, end), asset=asset, source=source, table=table, what=what
    )
    expected = read_or_fail(
        lambda: flights.schema(table), asset=asset, source=source, table=table, what="its schema"
    )
    results, error = validate_source_frame(context, asset, df, expected, source)
    if error is not None:
        # the checks are the visible record; the Failure keeps the frame from being stored
        yield from results
        raise dg.Failure(
            description=error,
            metadata={r.check_name or "": r.passed for r in results},
            allow_retries=False,
        )
    yield dg.Output(df)
    yield from results


def _daily_raw_asset(
    table: str, description: str, retry_policy: dg.RetryPolicy = SOURCE_RETRY
) -> dg.AssetsDefinition:
    """A daily-partitioned copy of one source table; a range of days is read in one go.

    The frame is checked (schema, null keys) before it is returned: a failed blocking check
    fails the step with a ``dg.Failure`` naming the run, the days, columns and counts, so
    nothing is stored or marked materialized; the check results are still recorded."""
    name = f"raw_{table}"

    @dg.asset(
        name=name,
        group_name="ingest",
        kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
        code_version=CODE_VERSION,
        description=description,
        metadata={"partition_expr": "date"},
        check_specs=_checks(name),
        partitions_def=DAILY_2013,
        backfill_policy=SINGLE_RUN,
        retry_policy=retry_policy,
    )
    def _raw(context: dg.AssetExecutionContext, flights: DataSource):
        yield from _read_window(context, flights, table)

    return _raw


raw_flights = _daily_raw_asset("flights", "One row per scheduled departure, by day.")
raw_weather = _daily_raw_asset("weather", "Hourly weather at EWR, JFK and LGA, by day.")


@dg.asset(
    group_name="ingest",
    kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
    code_version=CODE_VERSION,
    retry_policy=SOURCE_RETRY,
    description="Aircraft by tail number (reference table).",
)
def planes(flights: DataSource) -> pl.DataFrame:
    return read_or_fail(
        lambda: flights.read("planes"),
        asset="planes",
        source=f"'flights' ({type(flights).__name__})",
        table="planes",
        what="the whole table",
    )
