"""The seattle_weather instance's feature function (``mlx_assets/defs/seattle_weather``)."""

import math

import polars as pl


def build_features(seattle_weather: pl.DataFrame) -> pl.DataFrame:
    """The day's measurements plus the temperature range and the season as a point on a circle.

    Args:
        seattle_weather: rows of the ``seattle_weather`` table (vega_datasets data source):
            ``date`` (Date), ``precipitation`` (mm), ``temp_max``/``temp_min`` (C), ``wind``
            (m/s), ``weather`` (String label).

    Returns:
        The same rows with ``temp_range`` (C, Float64) and ``day_of_year_sin``/``_cos`` (Float64
        in [-1, 1]) added.
    """
    angle = pl.col("date").dt.ordinal_day().cast(pl.Float64) * (2 * math.pi / 365.25)
    return seattle_weather.with_columns(
        (pl.col("temp_max") - pl.col("temp_min")).alias("temp_range"),
        angle.sin().alias("day_of_year_sin"),
        angle.cos().alias("day_of_year_cos"),
    )
