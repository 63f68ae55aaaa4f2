"""Partitioned storage: layout, multi-partition inputs, single-run backfill outputs."""

import datetime as dt
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlx_resources.io_managers import (
    MissingPartitionFileError,
    PartitionSchemaMismatchError,
    PartitionSplitError,
    content_hash,
)
from mlx_resources.io_managers._partition_split import SplitError, assign_partition_keys
from mlx_resources.io_managers._polars_files import encode_segment
from tests.io_managers.helpers import materializations, range_tags, resources

DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-05")
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]


def day_frame(day: str, n: int = 3) -> pl.DataFrame:
    date = dt.date.fromisoformat(day)
    return pl.DataFrame({"date": [date] * n, "day": [day] * n, "v": [float(i) for i in range(n)]})


def test_partitioned_round_trip_and_multi_partition_inputs(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    seen: dict[str, pl.DataFrame] = {}

    @dg.asset(partitions_def=DAILY, key_prefix=["raw"])
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return day_frame(context.partition_key)

    @dg.asset(ins={"events": dg.AssetIn(key=["raw", "events"])})
    def all_events(events: pl.DataFrame) -> pl.DataFrame:
        seen["all"] = events
        return events

    @dg.asset(
        partitions_def=DAILY,
        ins={
            "events": dg.AssetIn(
                key=["raw", "events"],
                partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1),
            )
        },
    )
    def two_days(events: pl.LazyFrame) -> pl.DataFrame:
        seen["two_days"] = events.collect()
        return events.collect()

    assets = [events, all_events, two_days]
    res = resources(tmp_path)
    for day in DAYS:
        dg.materialize(
            assets, selection=[events], partition_key=day, instance=instance, resources=res
        )
    assert sorted(p.name for p in (tmp_path / "raw" / "events").iterdir()) == [
        f"{d}.arrow" for d in DAYS
    ]
    assert_frame_equal(
        pl.read_ipc(tmp_path / "raw/events/2024-01-02.arrow"), day_frame("2024-01-02")
    )

    dg.materialize(assets, selection=[all_events], instance=instance, resources=res)
    assert_frame_equal(seen["all"], pl.concat([day_frame(d) for d in DAYS]))

    dg.materialize(
        assets, selection=[two_days], partition_key="2024-01-03", instance=instance, resources=res
    )
    assert seen["two_days"]["day"].unique(maintain_order=True).to_list() == [
        "2024-01-02",
        "2024-01-03",
    ]


def test_missing_upstream_partition_can_be_skipped_when_asked(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY)
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return day_frame(context.partition_key)

    @dg.asset(ins={"events": dg.AssetIn(metadata={"allow_missing_partitions": True})})
    def tolerant(events: pl.DataFrame) -> pl.DataFrame:
        return events

    res = resources(tmp_path)
    for day in ("2024-01-01", "2024-01-03"):
        dg.materialize(
            [events, tolerant],
            selection=[events],
            partition_key=day,
            instance=instance,
            resources=res,
        )
    dg.materialize([events, tolerant], selection=[tolerant], instance=instance, resources=res)
    assert pl.read_ipc(tmp_path / "tolerant.arrow")["day"].unique().sort().to_list() == [
        "2024-01-01",
        "2024-01-03",
    ]


@pytest.mark.parametrize("column", ["date", "day"])  # a Date column and a string column
def test_single_run_backfill_output_is_split_per_partition(
    tmp_path: Path, instance: dg.DagsterInstance, column: str
) -> None:
    @dg.asset(partitions_def=DAILY, metadata={"partition_expr": column})
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        keys = context.partition_keys
        # Deliberately unsorted rows and one empty day (01-03): the split must still be exact.
        return pl.concat([day_frame(k, n=i + 1) for i, k in enumerate(keys) if k != "2024-01-03"])[
            ::-1
        ]

    result = dg.materialize(
        [events],
        instance=instance,
        resources=resources(tmp_path),
        tags=range_tags("2024-01-01", "2024-01-04"),
    )
    assert result.success
    stored = {d: pl.read_ipc(tmp_path / "events" / f"{d}.arrow") for d in DAYS}
    assert {d: f.height for d, f in stored.items()} == {
        "2024-01-01": 1,
        "2024-01-02": 2,
        "2024-01-03": 0,
        "2024-01-04": 4,
    }
    for day, part in stored.items():
        assert set(part["day"].to_list()) <= {day}
        assert part.schema == day_frame(day).schema
    # One materialization per partition, each with its own row count / hash / path.
    for day in DAYS:
        [mat] = materializations(instance, "events", day)
        assert mat.metadata["dagster/row_count"].value == stored[day].height
        assert mat.metadata["content_hash"].value == content_hash(stored[day])
        assert mat.metadata["path"].value == str(tmp_path / "events" / f"{day}.arrow")


def test_backfill_rows_outside_the_range_fail_clearly(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY, metadata={"partition_expr": "date"})
    def events() -> pl.DataFrame:
        return pl.concat(
            [day_frame("2024-01-01"), day_frame("2024-01-02"), day_frame("2024-01-04")]
        )

    with pytest.raises(PartitionSplitError) as err:
        dg.materialize(
            [events],
            instance=instance,
            resources=resources(tmp_path),
            tags=range_tags("2024-01-01", "2024-01-02"),
        )
    msg = str(err.value)
    assert "asset 'events'" in msg
    assert "3 of 9 rows" in msg
    assert "2024-01-04" in msg
    assert "Fix:" in msg
    assert not (tmp_path / "events").exists()  # nothing was published


def test_backfill_without_the_partition_column_fails_clearly(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY, metadata={"partition_expr": "event_date"})
    def events() -> pl.DataFrame:
        return day_frame("2024-01-01")

    with pytest.raises(PartitionSplitError, match=r"no column 'event_date'.*Fix:"):
        dg.materialize(
            [events],
            instance=instance,
            resources=resources(tmp_path),
            tags=range_tags("2024-01-01", "2024-01-02"),
        )


def test_backfill_without_partition_expr_fails_clearly(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY)
    def events() -> pl.DataFrame:
        return day_frame("2024-01-01")

    with pytest.raises(PartitionSplitError, match=r"covers 2 partitions.*partition_expr.*Fix:"):
        dg.materialize(
            [events],
            instance=instance,
            resources=resources(tmp_path),
            tags=range_tags("2024-01-01", "2024-01-02"),
        )


def test_single_partition_is_validated_when_partition_expr_is_set(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY, metadata={"partition_expr": "date"})
    def events() -> pl.DataFrame:
        return day_frame("2024-01-02")

    with pytest.raises(PartitionSplitError, match="outside the run's 1 partition key"):
        dg.materialize(
            [events], partition_key="2024-01-01", instance=instance, resources=resources(tmp_path)
        )


def test_multi_dimensional_partitions_use_safe_folders(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    multi = dg.MultiPartitionsDefinition(
        {"date": DAILY, "region": dg.StaticPartitionsDefinition(["eu/west", "us:east"])}
    )

    @dg.asset(partitions_def=multi)
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        keys = context.partition_key.keys_by_dimension
        return day_frame(keys["date"]).with_columns(region=pl.lit(keys["region"]))

    @dg.asset
    def everything(events: pl.DataFrame) -> pl.DataFrame:
        return events

    res = resources(tmp_path)
    for key in (
        dg.MultiPartitionKey({"date": "2024-01-01", "region": "eu/west"}),
        dg.MultiPartitionKey({"date": "2024-01-02", "region": "us:east"}),
    ):
        dg.materialize(
            [events, everything],
            selection=[events],
            partition_key=key,
            instance=instance,
            resources=res,
        )
    stored = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "events").rglob("*.arrow"))
    assert stored == [
        "events/date=2024-01-01/region=eu%2Fwest.arrow",
        "events/date=2024-01-02/region=us%3Aeast.arrow",
    ]
    # 'everything' needs all 8 combinations; only 2 exist, so the load fails, naming a gap.
    with pytest.raises(
        MissingPartitionFileError,
        match=(
            r"asset 'events' partition '[^']+\|[^']+'"
            r".*/events/date=[^/]+/region=[^/]+\.arrow.*Fix:"
        ),
    ):
        dg.materialize(
            [events, everything], selection=[everything], instance=instance, resources=res
        )
    [mat] = materializations(instance, "events", "2024-01-01|eu/west")
    assert mat.metadata["dagster/row_count"].value == 3
    assert not (tmp_path / "everything.arrow").exists()


def test_assign_partition_keys_multi_dimensional_and_datetime() -> None:
    multi = dg.MultiPartitionsDefinition(
        {"date": DAILY, "region": dg.StaticPartitionsDefinition(["eu", "us"])}
    )
    df = pl.DataFrame(
        {
            "ts": [dt.datetime(2024, 1, 1, 23, 59), dt.datetime(2024, 1, 2, 0, 0), None],
            "r": ["eu", "us", "eu"],
        }
    )
    keys = [str(multi.get_partition_key_from_str(k)) for k in ("2024-01-01|eu", "2024-01-02|us")]
    got = assign_partition_keys(df, multi, keys, {"date": "ts", "region": "r"})
    assert got.to_list() == ["2024-01-01|eu", "2024-01-02|us", None]
    with pytest.raises(SplitError, match="must map each dimension"):
        assign_partition_keys(df, multi, keys, "ts")

    hourly = dg.HourlyPartitionsDefinition(start_date="2024-01-01-00:00", timezone="Europe/Berlin")
    utc = pl.Series("ts", [dt.datetime(2024, 1, 1, 0, 30)]).dt.replace_time_zone("UTC")
    # 00:30 UTC is 01:30 in Berlin: partition 01:00, not 00:00.
    assert assign_partition_keys(
        utc.to_frame(), hourly, ["2024-01-01-00:00", "2024-01-01-01:00"], "ts"
    ).to_list() == ["2024-01-01-01:00"]
    with pytest.raises(SplitError, match="shorter than a day"):
        assign_partition_keys(
            pl.DataFrame({"d": [dt.date(2024, 1, 1)]}), hourly, ["2024-01-01-00:00"], "d"
        )


def test_encode_segment_is_safe() -> None:
    assert encode_segment("2024-01-01") == "2024-01-01"
    assert encode_segment("a/b") == "a%2Fb"
    assert encode_segment("..") == "%2E."
    assert encode_segment(".hidden") == "%2Ehidden"
    assert encode_segment("2024-01-01-10:00") == "2024-01-01-10%3A00"


def test_partitions_with_different_schemas_fail_clearly(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY)
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        df = day_frame(context.partition_key)
        return df.with_columns(extra=pl.lit(1)) if context.partition_key == "2024-01-02" else df

    @dg.asset
    def everything(events: pl.DataFrame) -> pl.DataFrame:
        return events

    res = resources(tmp_path)
    for day in DAYS:
        dg.materialize(
            [events, everything],
            selection=[events],
            partition_key=day,
            instance=instance,
            resources=res,
        )
    with pytest.raises(
        PartitionSchemaMismatchError,
        match=r"asset 'events' partition '2024-01-02'.*schemas differ.*extra.*Fix:",
    ):
        dg.materialize(
            [events, everything], selection=[everything], instance=instance, resources=res
        )


def test_op_outputs_round_trip(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """Outputs without an asset key live under <base>/<run id>/<step>/<output>."""

    @dg.op
    def make() -> pl.DataFrame:
        return day_frame("2024-01-01")

    @dg.op
    def use(df: pl.DataFrame) -> pl.DataFrame:
        return df.select(pl.len())

    @dg.job(resource_defs=resources(tmp_path))
    def job() -> None:
        use(make())

    result = job.execute_in_process(instance=instance)
    assert (tmp_path / result.run_id / "make" / "result.arrow").is_file()
    assert pl.read_ipc(tmp_path / result.run_id / "use" / "result.arrow").item() == 3
