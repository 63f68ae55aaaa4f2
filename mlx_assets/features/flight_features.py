"""Model features per flight, with the target: arrival more than 15 minutes late."""

import dagster as dg
import polars as pl

from mlx_assets.ingest.check_guard import describe_failed, failed_check_partitions
from mlx_assets.partitions import DAILY_2013, SINGLE_RUN
from mlx_assets.versioning import code_version

DELAY_MINUTES = 15
TARGET = "delayed"
WEATHER_FEATURES = (
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
)
NUMERIC_FEATURES = (
    "sched_dep_hour",
    "sched_dep_minute_of_day",
    "sched_arr_hour",
    "distance",
    "day_of_week",
    "day_of_year",
    "month",
    "is_weekend",
    "plane_age",
    "seats",
    "engines",
    *WEATHER_FEATURES,
)
CATEGORICAL_FEATURES = ("carrier", "origin", "dest")


def build_features(
    flights: pl.DataFrame, weather: pl.DataFrame, planes: pl.DataFrame
) -> pl.DataFrame:
    """Pure polars, so the benchmark's plain script calls exactly this."""
    # Cancelled and diverted flights have no arrival delay; they are not labelled.
    labelled = flights.filter(pl.col("arr_delay").is_not_null())
    wx = weather.select("origin", "time_hour", *WEATHER_FEATURES).unique(
        subset=["origin", "time_hour"], keep="first", maintain_order=True
    )
    fleet = planes.select(
        "tailnum",
        (2013 - pl.col("year")).cast(pl.Float64).alias("plane_age"),
        pl.col("seats").cast(pl.Float64),
        pl.col("engines").cast(pl.Float64),
    )
    return (
        labelled.join(wx, on=["origin", "time_hour"], how="left")
        .join(fleet, on="tailnum", how="left")
        .select(
            "date",
            "carrier",
            "origin",
            "dest",
            (pl.col("sched_dep_time") // 100).cast(pl.Float64).alias("sched_dep_hour"),
            ((pl.col("sched_dep_time") // 100) * 60 + pl.col("sched_dep_time") % 100)
            .cast(pl.Float64)
            .alias("sched_dep_minute_of_day"),
            (pl.col("sched_arr_time") // 100).cast(pl.Float64).alias("sched_arr_hour"),
            pl.col("distance").cast(pl.Float64),
            pl.col("date").dt.weekday().cast(pl.Float64).alias("day_of_week"),
            pl.col("date").dt.ordinal_day().cast(pl.Float64).alias("day_of_year"),
            pl.col("date").dt.month().cast(pl.Float64).alias("month"),
            (pl.col("date").dt.weekday() >= 6).cast(pl.Float64).alias("is_weekend"),
            "plane_age",
            "seats",
            "engines",
            *[pl.col(c).cast(pl.Float64) for c in WEATHER_FEATURES],
            (pl.col("arr_delay") > DELAY_MINUTES).cast(pl.Int8).alias(TARGET),
        )
    )


SOURCE_CHECKS = {
    "raw_flights": ("schema_matches_source", "no_null_keys"),
    "raw_weather": ("schema_matches_source", "no_null_keys"),
}
"""The blocking checks of the daily inputs: a day whose newest evaluation failed is not used."""


def refuse_failed_inputs(context: dg.AssetExecutionContext) -> None:
    """Raise ``dg.Failure`` (not retried) when an input day's newest blocking check failed,
    naming the run, each input partition with its failed checks, and the fix."""
    keys = context.partition_keys
    failed = failed_check_partitions(context.instance, SOURCE_CHECKS, keys, DAILY_2013)
    if not failed:
        return
    bad_days = sorted({day for partitions in failed.values() for day in partitions})
    span = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
    assets = ",".join(sorted(failed))
    example = (
        "DAGSTER_HOME=$(mlx home) "
        f"dagster asset materialize -m mlx_assets.definitions --select {assets} "
        f"--partition {bad_days[0]}"
    )
    raise dg.Failure(
        description=(
            f"run {context.run.run_id}: flight_features for {span} will not use input "
            f"partitions whose latest blocking check failed: {describe_failed(failed)}. "
            f"fix: repair the source data for those days and re-materialize them (e.g. "
            f"{example}), then flight_features; or leave those days out of this run."
        ),
        metadata={"failed_inputs": dg.MetadataValue.json(failed)},
        allow_retries=False,
    )


@dg.asset(
    partitions_def=DAILY_2013,
    backfill_policy=SINGLE_RUN,
    group_name="features",
    kinds={"polars", "arrow"},  # Arrow IPC files (PolarsIOManager default format)
    code_version=code_version(__file__),
    metadata={"partition_expr": "date"},
    description=f"Flights with weather, plane and calendar features; target: arrival delay "
    f"over {DELAY_MINUTES} minutes.",
)
def flight_features(
    context: dg.AssetExecutionContext,
    raw_flights: pl.DataFrame,
    raw_weather: pl.DataFrame,
    planes: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    refuse_failed_inputs(context)
    df = build_features(raw_flights, raw_weather, planes)
    rate = float(df.get_column(TARGET).mean() or 0.0) if df.height else 0.0
    context.log.info(f"{df.height} labelled flights, {rate:.1%} delayed")
    return dg.Output(df, metadata={"delayed_rate": dg.MetadataValue.float(rate)})
