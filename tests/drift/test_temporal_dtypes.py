"""Temporal and mixed numeric dtypes in drift columns: the same instants (durations, times of
day, numbers) compare as equal whatever their unit, time zone or width; pairs with no common
scale are refused before anything is computed, naming the column, both dtypes and the fix."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector

UNITS = ["ms", "us", "ns"]
ZONES = [None, "UTC", "America/New_York", "Asia/Kolkata"]
N = 300


def _instants(shift: timedelta = timedelta(0)) -> list[datetime]:
    # millisecond-aligned so that every unit holds them exactly; spread over DST changes
    return [datetime(2024, 1, 1) + shift + timedelta(hours=7 * i, milliseconds=i) for i in range(N)]


def _both(det: PolarsDriftDetector, ref: pl.DataFrame, cur: pl.DataFrame, column: str = "t"):
    one = det.compare(ref, cur, numeric=[column], categorical=[]).column(column)
    prepared = det.prepare_reference(ref, numeric=[column], categorical=[])
    two = det.compare_prepared(prepared, cur).column(column)
    assert one == two
    return one


def _datetimes(unit: str, zone: str | None, shift: timedelta = timedelta(0)) -> pl.DataFrame:
    s = pl.Series("t", _instants(shift), dtype=pl.Datetime(unit))
    if zone is not None:
        # the same instants (UTC wall times), shown in another zone
        s = s.dt.replace_time_zone("UTC").dt.convert_time_zone(zone)
    return s.to_frame()


@pytest.mark.parametrize("ref_unit", UNITS)
@pytest.mark.parametrize("cur_unit", UNITS)
def test_the_same_naive_datetimes_in_any_units_do_not_drift(ref_unit: str, cur_unit: str) -> None:
    c = _both(PolarsDriftDetector(), _datetimes(ref_unit, None), _datetimes(cur_unit, None))
    assert (c.test, c.statistic, c.p_value, c.drifted) == ("ks", 0.0, 1.0, False)
    assert c.stats["wasserstein"] == 0.0 and c.stats["psi"] == 0.0


@pytest.mark.parametrize("ref_zone", ZONES[1:])
@pytest.mark.parametrize("cur_zone", ZONES[1:])
@pytest.mark.parametrize(("ref_unit", "cur_unit"), [("us", "ns"), ("ns", "ms"), ("ms", "ms")])
def test_the_same_instants_in_any_zones_and_units_do_not_drift(
    ref_zone: str, cur_zone: str, ref_unit: str, cur_unit: str
) -> None:
    ref, cur = _datetimes(ref_unit, ref_zone), _datetimes(cur_unit, cur_zone)
    c = _both(PolarsDriftDetector(), ref, cur)
    assert (c.statistic, c.p_value, c.drifted) == (0.0, 1.0, False)


@pytest.mark.parametrize(("ref_unit", "cur_unit"), [("us", "ns"), ("ms", "us"), ("ns", "ms")])
def test_shifted_instants_agree_with_scipy_on_the_instants(ref_unit: str, cur_unit: str) -> None:
    shift = timedelta(days=15)
    ref, cur = _datetimes(ref_unit, "UTC"), _datetimes(cur_unit, "Europe/Paris", shift)
    c = _both(PolarsDriftDetector(), ref, cur)
    seconds = lambda xs: np.array([x.timestamp() for x in xs])  # noqa: E731
    want = sps.ks_2samp(seconds(_instants()), seconds(_instants(shift)))
    assert c.statistic == pytest.approx(want.statistic, abs=1e-12)
    assert c.p_value == pytest.approx(want.pvalue, rel=1e-6, abs=1e-12)
    assert want.pvalue < 0.05
    assert c.drifted
    # Wasserstein is in nanoseconds: the shift itself, whatever the units
    assert c.stats["wasserstein"] == pytest.approx(shift.total_seconds() * 1e9, rel=1e-9)


@pytest.mark.parametrize("ref_unit", UNITS)
@pytest.mark.parametrize("cur_unit", UNITS)
def test_durations_in_any_units_compare_as_lengths(ref_unit: str, cur_unit: str) -> None:
    lengths = [timedelta(minutes=3 * i, milliseconds=i) for i in range(N)]
    ref = pl.Series("t", lengths, dtype=pl.Duration(ref_unit)).to_frame()
    cur = pl.Series("t", lengths, dtype=pl.Duration(cur_unit)).to_frame()
    c = _both(PolarsDriftDetector(), ref, cur)
    assert (c.statistic, c.p_value) == (0.0, 1.0)
    longer = cur.with_columns(pl.col("t") + pl.duration(hours=2))
    c = _both(PolarsDriftDetector(), ref, longer)
    assert c.stats["wasserstein"] == pytest.approx(2 * 3600e9, rel=1e-12)


def test_dates_and_times_of_day() -> None:
    days = pl.DataFrame({"t": [date(2024, 1, 1) + timedelta(days=i % 90) for i in range(N)]})
    c = _both(PolarsDriftDetector(), days, days.with_columns(pl.col("t").cast(pl.Date)))
    assert (c.statistic, c.p_value) == (0.0, 1.0)
    later = days.with_columns(pl.col("t") + pl.duration(days=1))
    assert _both(PolarsDriftDetector(), days, later).stats["wasserstein"] == 86_400e9
    times = pl.DataFrame({"t": [time(i % 24, i % 60) for i in range(N)]})
    c = _both(PolarsDriftDetector(), times, times)
    assert (c.statistic, c.p_value) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("ref", "cur"),
    [
        (
            pl.Series("t", list(range(N)), dtype=pl.Int16),
            pl.Series("t", [float(i) for i in range(N)]),
        ),
        (
            pl.Series("t", list(range(N)), dtype=pl.UInt32),
            pl.Series("t", list(range(N)), dtype=pl.Int64),
        ),
        (
            pl.Series("t", [Decimal(i) / 4 for i in range(N)], dtype=pl.Decimal(12, 2)),
            pl.Series("t", [i / 4 for i in range(N)], dtype=pl.Float32),
        ),
        (
            pl.Series("t", [i % 3 == 0 for i in range(N)]),
            pl.Series("t", [int(i % 3 == 0) for i in range(N)], dtype=pl.Int8),
        ),
    ],
    ids=["int16-float64", "uint32-int64", "decimal-float32", "bool-int8"],
)
def test_number_dtypes_mix_freely(ref: pl.Series, cur: pl.Series) -> None:
    c = _both(PolarsDriftDetector(), ref.to_frame(), cur.to_frame())
    assert (c.statistic, c.p_value, c.drifted) == (0.0, 1.0, False)
    assert c.reference_rows == c.current_rows == N


@pytest.mark.parametrize(
    ("ref", "cur", "fix"),
    [
        (pl.Datetime("us"), pl.Datetime("ns", "UTC"), "replace_time_zone"),
        (pl.Datetime("ms", "Europe/Paris"), pl.Datetime("ms"), "replace_time_zone"),
        (pl.Date(), pl.Datetime("us"), "cast(pl.Date)"),
        (pl.Datetime("ns", "UTC"), pl.Date(), "cast(pl.Date)"),
        (pl.Int64(), pl.Datetime("us"), "same type on both sides"),
        (pl.Duration("ms"), pl.Float64(), "same type on both sides"),
        (pl.Duration("us"), pl.Datetime("us"), "one dtype on both sides"),
        (pl.Time(), pl.Duration("ns"), "one dtype on both sides"),
        (pl.Date(), pl.Time(), "one dtype on both sides"),
    ],
)
def test_pairs_without_a_common_scale_are_refused_before_computing(
    ref: pl.DataType, cur: pl.DataType, fix: str
) -> None:
    det = PolarsDriftDetector()
    reference = pl.DataFrame(schema={"when": ref})
    current = pl.DataFrame(schema={"when": cur})
    for call in (
        lambda: det.compare(reference, current, numeric=["when"], categorical=[]),
        lambda: det.compare_prepared(
            det.prepare_reference(reference, numeric=["when"], categorical=[]), current
        ),
    ):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert "'when'" in message and str(ref) in message and str(cur) in message
        assert "fix:" in message and fix in message


@pytest.mark.parametrize(
    "dtype", [pl.List(pl.Int64), pl.Struct({"a": pl.Int64}), pl.Binary(), pl.String()]
)
def test_types_that_are_not_numbers_are_refused_on_either_side(dtype: pl.DataType) -> None:
    det = PolarsDriftDetector()
    good = pl.DataFrame(schema={"x": pl.Float64})
    bad = pl.DataFrame(schema={"x": dtype})
    with pytest.raises(TypeError, match=r"'x' has dtype .* in the reference; .* fix:"):
        det.prepare_reference(bad, numeric=["x"], categorical=[])
    with pytest.raises(TypeError, match=r"'x' has dtype .* in the current; .* fix:"):
        det.compare(good, bad, numeric=["x"], categorical=[])


def test_categorical_sides_that_would_read_differently_are_refused_or_skipped() -> None:
    det = PolarsDriftDetector()
    ref = _datetimes("us", None).with_columns(b=pl.lit(True), s=pl.lit("x"))
    cur = _datetimes("ns", None).with_columns(b=pl.lit("true"), s=pl.lit("x").cast(pl.Categorical))
    with pytest.raises(TypeError, match=r"categorical column 't' has dtype Datetime.* fix: cast"):
        det.compare(ref, cur, numeric=[], categorical=["t"])
    with pytest.raises(TypeError, match=r"categorical column 'b' has dtype Boolean .* String"):
        det.compare_prepared(det.prepare_reference(ref, numeric=[], categorical=["b"]), cur)
    # inferred (not named): the disagreeing column is left out and listed as skipped
    report = det.compare(ref, cur)
    assert [c.column for c in report.columns] == ["s"]
    assert set(report.skipped_columns) == {"t", "b"}
    # the same dtype on both sides is fine
    same = det.compare(ref, ref, numeric=[], categorical=["t"]).column("t")
    assert same.statistic == 0.0
