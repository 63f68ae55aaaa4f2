"""Feature functions for the sandbox tests: one that needs far more memory than its limit."""

from __future__ import annotations

import polars as pl

from mlx_assets.features.flight_features import build_features


def explode(flights: pl.DataFrame, weather: pl.DataFrame, planes: pl.DataFrame) -> pl.DataFrame:
    """The flights features, after a careless cross join: every flight of the day with every
    other, 16 times (a day of ~900 flights: 14 M rows x 40 columns, 5+ GiB)."""
    copies = pl.DataFrame({"copy": pl.int_range(16, eager=True)})
    crossed = flights.join(flights, how="cross", suffix="_other").join(copies, how="cross")
    print(f"crossed {crossed.height} rows")  # not reached under the tests' 3 GiB limit
    return build_features(flights, weather, planes)


def phone_home(flights: pl.DataFrame, port: pl.DataFrame) -> pl.DataFrame:
    """Connects to 127.0.0.1:<port> before returning the flights (exfiltration, say)."""
    import socket

    with socket.create_connection(("127.0.0.1", int(port["port"][0])), timeout=5):
        pass
    return flights


def bad_column(flights: pl.DataFrame) -> pl.DataFrame:
    """Fails the way a user's feature function does."""
    raise ValueError("bad column x")


def returns_none(flights: pl.DataFrame) -> pl.DataFrame:
    """Forgets to return its frame."""
    flights.with_columns(pl.lit(1).alias("one"))
    return None  # type: ignore[return-value]
