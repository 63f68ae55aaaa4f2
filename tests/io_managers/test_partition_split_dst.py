"""Splitting a frame by time-window partitions in a zone with daylight saving time: wall
times that do not exist (spring forward) or happen twice (autumn), aware values in another
zone, Date columns; and the issue's single-run backfill through the IO manager."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlx_resources.io_managers import PartitionSplitError
from mlx_resources.io_managers._partition_split import assign_partition_keys
from tests.io_managers.helpers import range_tags, resources

NY = "America/New_York"
DAILY_NY = dg.DailyPartitionsDefinition(start_date="2024-03-01", end_date="2024-11-30", timezone=NY)
HOURLY_NY = dg.HourlyPartitionsDefinition(
    start_date="2024-03-09-00:00", end_date="2024-11-05-00:00", timezone=NY
)


def _naive(*stamps: str) -> pl.DataFrame:
    return pl.DataFrame({"ts": [dt.datetime.fromisoformat(s) for s in stamps]})


def _assign(df: pl.DataFrame, pdef: dg.PartitionsDefinition, keys: list[str]) -> list[str | None]:
    return assign_partition_keys(df, pdef, keys, "ts").to_list()


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_spring_forward_gap_goes_to_its_day(unit: str) -> None:
    keys = ["2024-03-09", "2024-03-10", "2024-03-11"]
    df = _naive(
        "2024-03-10T02:00:00", "2024-03-10T02:30:00", "2024-03-10T02:59:59.999", "2024-03-09T23:59"
    ).with_columns(pl.col("ts").dt.cast_time_unit(unit))
    assert _assign(df, DAILY_NY, keys) == ["2024-03-10"] * 3 + ["2024-03-09"]


def test_autumn_overlap_goes_to_its_day() -> None:
    keys = ["2024-11-02", "2024-11-03", "2024-11-04"]
    df = _naive("2024-11-03T01:30", "2024-11-03T01:00", "2024-11-03T00:59", "2024-11-04T00:00")
    assert _assign(df, DAILY_NY, keys) == ["2024-11-03"] * 3 + ["2024-11-04"]


def test_hourly_partitions_across_the_spring_gap() -> None:
    keys = HOURLY_NY.get_partition_keys_in_range(
        dg.PartitionKeyRange("2024-03-10-00:00", "2024-03-10-04:00")
    )
    assert "2024-03-10-02:00" not in keys  # the hour does not exist
    df = _naive("2024-03-10T01:59", "2024-03-10T02:00", "2024-03-10T02:30", "2024-03-10T03:15")
    # shifted forward by the gap (one hour), as Spark and Trino do: 02:30 is read as 03:30
    assert _assign(df, HOURLY_NY, keys) == [
        "2024-03-10-01:00",
        "2024-03-10-03:00",
        "2024-03-10-03:00",
        "2024-03-10-03:00",
    ]


def test_hourly_partitions_across_the_autumn_overlap() -> None:
    both = ["2024-11-03-00:00", "2024-11-03-01:00", "2024-11-03-01:00-0500", "2024-11-03-02:00"]
    df = _naive("2024-11-03T00:30", "2024-11-03T01:30", "2024-11-03T02:10")
    # a wall time that happens twice goes to the first occurrence when the run has both ...
    assert _assign(df, HOURLY_NY, both) == [
        "2024-11-03-00:00",
        "2024-11-03-01:00",
        "2024-11-03-02:00",
    ]
    # ... and to the one the run has when it has only the second
    only_second = ["2024-11-03-01:00-0500"]
    assert _assign(_naive("2024-11-03T01:30"), HOURLY_NY, only_second) == only_second
    # aware values are instants: the second 01:30 is 06:30 UTC
    aware = pl.DataFrame(
        {"ts": [dt.datetime(2024, 11, 3, 5, 30), dt.datetime(2024, 11, 3, 6, 30)]}
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    assert _assign(aware, HOURLY_NY, both) == ["2024-11-03-01:00", "2024-11-03-01:00-0500"]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "Europe/London"])
def test_aware_values_in_another_zone_are_instants(zone: str) -> None:
    keys = ["2024-03-09", "2024-03-10", "2024-03-11"]
    utc = [
        dt.datetime(2024, 3, 10, 4, 59),  # 23:59 EST on the 9th
        dt.datetime(2024, 3, 10, 5, 0),  # 00:00 EST on the 10th
        dt.datetime(2024, 3, 11, 3, 59),  # 23:59 EDT on the 10th
        dt.datetime(2024, 3, 11, 4, 0),  # 00:00 EDT on the 11th
    ]
    df = pl.DataFrame({"ts": utc}).with_columns(
        pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone(zone)
    )
    assert _assign(df, DAILY_NY, keys) == ["2024-03-09", "2024-03-10", "2024-03-10", "2024-03-11"]


def test_date_columns_including_a_midnight_that_does_not_exist() -> None:
    keys = ["2024-03-09", "2024-03-10", "2024-03-11"]
    df = pl.DataFrame({"ts": [dt.date(2024, 3, 10), dt.date(2024, 3, 9), dt.date(2024, 3, 11)]})
    assert _assign(df, DAILY_NY, keys) == ["2024-03-10", "2024-03-09", "2024-03-11"]
    # Sao Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04: that day has no midnight
    sao = dg.DailyPartitionsDefinition(start_date="2018-11-01", timezone="America/Sao_Paulo")
    days = ["2018-11-03", "2018-11-04", "2018-11-05"]
    dates = pl.DataFrame({"ts": [dt.date(2018, 11, 4), dt.date(2018, 11, 3)]})
    assert _assign(dates, sao, days) == ["2018-11-04", "2018-11-03"]
    midnight = _naive("2018-11-04T00:00", "2018-11-04T00:45", "2018-11-04T01:00")
    assert _assign(midnight, sao, days) == ["2018-11-04"] * 3


def test_rows_really_outside_are_still_outside() -> None:
    keys = ["2024-03-10"]
    df = _naive("2024-03-10T02:30", "2024-03-11T00:00", "2024-03-09T23:59:59")
    assert _assign(df, DAILY_NY, keys) == ["2024-03-10", None, None]


def test_single_run_backfill_over_spring_forward_stores_each_day(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The issue's example: 2024-03-09..2024-03-11 in one run, a row at 02:30 on the 10th."""

    @dg.asset(partitions_def=DAILY_NY, metadata={"partition_expr": "ts"})
    def events() -> pl.DataFrame:
        return _naive(
            "2024-03-09T12:00", "2024-03-10T02:30", "2024-03-10T12:00", "2024-03-11T01:30"
        ).with_columns(v=pl.Series([1, 2, 3, 4]))

    result = dg.materialize(
        [events],
        instance=instance,
        resources=resources(tmp_path),
        tags=range_tags("2024-03-09", "2024-03-11"),
    )
    assert result.success
    stored = {p.stem: pl.read_ipc(p)["v"].to_list() for p in (tmp_path / "events").glob("*.arrow")}
    assert stored == {"2024-03-09": [1], "2024-03-10": [2, 3], "2024-03-11": [4]}


def test_rows_without_a_partition_value_are_named_not_filtered(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY_NY, metadata={"partition_expr": "ts"})
    def events() -> pl.DataFrame:
        return pl.DataFrame({"ts": [dt.datetime(2024, 3, 9, 12), None, None], "v": [1, 2, 3]})

    for tags in (range_tags("2024-03-09", "2024-03-11"), {"dagster/partition": "2024-03-09"}):
        with pytest.raises(
            PartitionSplitError, match=r"\{'ts': 2\}.*belong to no partition"
        ) as info:
            dg.materialize([events], instance=instance, resources=resources(tmp_path), tags=tags)
        assert "filter the frame" not in str(info.value) and "Fix: give every row" in str(
            info.value
        )
        assert not (tmp_path / "events").exists()
