"""Raw tables, read from the data source named ``flights``."""

from datetime import timedelta

import dagster as dg
import polars as pl

from mlx_assets.partitions import DAILY_2013, SINGLE_RUN
from mlx_assets.versioning import code_version
from mlx_plugins.data_sources.base import DataSource

CODE_VERSION = code_version(__file__)
SOURCE_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL)
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


def _check_results(asset: str, df: pl.DataFrame, expected: dict[str, pl.DataType]):
    actual = dict(df.schema)
    diff = {
        c: f"{actual.get(c)} != {expected.get(c)}"
        for c in set(actual) | set(expected)
        if str(actual.get(c)) != str(expected.get(c))
    }
    yield dg.AssetCheckResult(
        asset_key=asset,
        check_name="schema_matches_source",
        passed=not diff,
        metadata={"mismatches": dg.MetadataValue.json(diff)},
    )
    nulls = df.select(pl.col(c).null_count() for c in KEY_COLUMNS[asset]).row(0, named=True)
    bad = {c: n for c, n in nulls.items() if n}
    yield dg.AssetCheckResult(
        asset_key=asset,
        check_name="no_null_keys",
        passed=not bad,
        metadata={"null_counts": dg.MetadataValue.json(bad)},
    )


def _read_window(context: dg.AssetExecutionContext, flights: DataSource, table: str):
    window = context.partition_time_window
    start, end = window.start.date(), (window.end - timedelta(days=1)).date()
    context.log.info(f"reading {table} for {start}..{end} from {type(flights).__name__}")
    df = flights.read(table, start, end)
    yield dg.Output(df)
    yield from _check_results(f"raw_{table}", df, flights.schema(table))


def _daily_raw_asset(table: str, description: str) -> dg.AssetsDefinition:
    """A daily-partitioned copy of one source table; a range of days is read in one go."""
    name = f"raw_{table}"

    @dg.asset(
        name=name,
        group_name="ingest",
        kinds={"polars", "parquet"},
        code_version=CODE_VERSION,
        description=description,
        metadata={"partition_expr": "date"},
        check_specs=_checks(name),
        partitions_def=DAILY_2013,
        backfill_policy=SINGLE_RUN,
        retry_policy=SOURCE_RETRY,
    )
    def _raw(context: dg.AssetExecutionContext, flights: DataSource):
        yield from _read_window(context, flights, table)

    return _raw


raw_flights = _daily_raw_asset("flights", "One row per scheduled departure, by day.")
raw_weather = _daily_raw_asset("weather", "Hourly weather at EWR, JFK and LGA, by day.")


@dg.asset(
    group_name="ingest",
    kinds={"polars", "parquet"},
    code_version=CODE_VERSION,
    retry_policy=SOURCE_RETRY,
    description="Aircraft by tail number (reference table).",
)
def planes(flights: DataSource) -> pl.DataFrame:
    return flights.read("planes")
