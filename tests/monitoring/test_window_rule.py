"""One rule for a training window, shared by the training_set asset and the drift sensor; and the
lifecycle's monitoring range."""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import polars as pl
import pytest

from mlx_assets.monitoring.coverage import lifecycle_monitoring_days
from mlx_assets.partitions import DAILY_2013
from mlx_assets.training.training_set import (
    TrainingSetConfig,
    build_training_set,
    split_ranges,
    window_problem,
)
from mlx_resources.platform import Platform, TrainingWindow
from tests.conftest import flights_lifecycle

YEAR = DAILY_2013.get_partition_keys()


def test_the_default_window_fits_2013():
    assert window_problem(TrainingWindow(), YEAR, whole_history=True) is None
    assert split_ranges(TrainingWindow())["valid"] == (date(2013, 8, 2), date(2013, 8, 31))


def test_a_window_moved_into_2012_is_refused_with_the_window_and_the_days():
    moved = TrainingWindow().shifted("2013-01-01")  # the seen bug: train_start 2012-03-04
    msg = window_problem(moved, YEAR)
    assert msg is not None
    assert "train 2012-03-04..2012-10-02" in msg
    assert "has no 'train' or 'valid' rows" in msg
    assert "days with data: 365 days, 2013-01-01..2013-12-31" in msg
    strict = window_problem(moved, YEAR, whole_history=True)
    assert "starts before the first day with data (2013-01-01)" in strict


def test_a_window_that_starts_early_but_has_rows_in_every_split():
    early = TrainingWindow().shifted("2013-11-30")  # 2013-01-31.. : fine either way
    assert window_problem(early, YEAR, whole_history=True) is None
    start = TrainingWindow(train_start="2012-12-01")  # reaches before the data
    assert window_problem(start, YEAR) is None  # the asset trains on what exists
    assert "starts before" in window_problem(start, YEAR, whole_history=True)


def test_a_gap_in_a_split_is_named():
    days = [d for d in YEAR if not "2013-09-01" <= d <= "2013-10-31"]
    assert "has no 'test' rows" in window_problem(TrainingWindow(), days)


def test_training_set_asset_fails_with_the_same_rule():
    day = date(2013, 1, 1)
    rows = pl.DataFrame({"date": [day + timedelta(n) for n in range(365)], "x": range(365)})
    with dg.instance_for_test() as instance:
        ctx = dg.build_asset_context(instance=instance)
        with pytest.raises(dg.Failure) as err:
            build_training_set(flights_lifecycle())(
                ctx, TrainingSetConfig(test_end="2013-01-01"), rows.lazy()
            )
    assert err.value.description.startswith(
        window_problem(TrainingWindow().shifted("2013-01-01"), YEAR)
    )
    assert "fix:" in err.value.description


def test_the_lifecycle_monitors_up_to_the_models_test_end():
    days = lifecycle_monitoring_days(Platform().window, YEAR)
    assert days[0] == "2013-01-01" and days[-1] == "2013-10-31"
    assert len(days) == 304
    short = Platform(
        window=TrainingWindow(
            train_end="2013-03-31", test_start="2013-04-01", test_end="2013-04-30"
        )
    )
    assert lifecycle_monitoring_days(short.window, YEAR)[-1] == "2013-04-30"
