"""Per-partition data versions in a single-run backfill (one step covering many partitions)."""

import datetime as dt
import inspect
from pathlib import Path

import dagster as dg
import polars as pl
from dagster._core.definitions.data_version import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    StaleStatus,
    get_input_data_version_tag,
)

from mlx_resources.io_managers import _dagster_partition_versions as hook
from mlx_resources.io_managers import content_hash
from tests.io_managers.helpers import (
    data_version,
    materializations,
    range_tags,
    resources,
    stale_status,
)

DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-06")
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
SINGLE_RUN = dg.BackfillPolicy.single_run()


def test_hook_matches_dagster() -> None:
    """Fails loudly when Dagster changes the private function the hook wraps."""
    from dagster._core.execution.plan import execute_step

    original = inspect.unwrap(execute_step._get_output_asset_events)
    assert tuple(inspect.signature(original).parameters) == hook._EXPECTED_PARAMS
    assert hook.hook_signature_matches()
    assert hook.install() is True
    assert getattr(execute_step._get_output_asset_events, "_mlx_hook", False)


def _graph(values: dict[str, float]) -> list[dg.AssetsDefinition]:
    @dg.asset(partitions_def=DAILY, backfill_policy=SINGLE_RUN, metadata={"partition_expr": "date"})
    def up(context: dg.AssetExecutionContext) -> pl.DataFrame:
        days = context.partition_keys
        return pl.DataFrame(
            {
                "date": [dt.date.fromisoformat(d) for d in days for _ in range(3)],
                "v": [values.get(d, 1.0) + i for d in days for i in range(3)],
            }
        )

    @dg.asset(partitions_def=DAILY, backfill_policy=SINGLE_RUN, metadata={"partition_expr": "date"})
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up.with_columns(w=pl.col("v") * 2)

    @dg.asset(ins={"down": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
    def total(down: pl.DataFrame) -> pl.DataFrame:
        return down.select(pl.col("w").sum())

    return [up, down, total]


def test_each_partition_gets_its_own_version_and_only_a_changed_day_goes_stale(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    values: dict[str, float] = {}
    assets = _graph(values)
    up, down, _ = assets
    res = resources(tmp_path)
    tags = range_tags(DAYS[0], DAYS[-1])
    assert dg.materialize([up, down], instance=instance, resources=res, tags=tags).success

    versions = {d: data_version(instance, "up", d) for d in DAYS}
    assert len(set(versions.values())) == len(DAYS)  # the date column differs per day
    for d in DAYS:
        stored = pl.read_ipc(tmp_path / "up" / f"{d}.arrow")
        assert versions[d] == content_hash(stored)
        [mat] = materializations(instance, "up", d)
        assert mat.tags[DATA_VERSION_IS_USER_PROVIDED_TAG] == "true"
        # down's provenance names the version of the up partition it was computed from
        [dmat] = materializations(instance, "down", d)
        assert dmat.tags[get_input_data_version_tag(dg.AssetKey("up"))] == versions[d]
    assert len({data_version(instance, "down", d) for d in DAYS}) == len(DAYS)
    for d in DAYS:
        assert stale_status(instance, assets, "down", d) == StaleStatus.FRESH

    # Re-run the whole range with one day changed: only that day's downstream is stale.
    values["2024-01-03"] = 100.0
    assert dg.materialize([up], instance=instance, resources=res, tags=tags).success
    for d in DAYS:
        changed = d == "2024-01-03"
        assert (data_version(instance, "up", d) != versions[d]) is changed
        expected = StaleStatus.STALE if changed else StaleStatus.FRESH
        assert stale_status(instance, assets, "down", d) == expected, d


def test_one_partition_run_and_range_run_agree(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """A day's version is the same whether it was written alone or as part of a range."""
    assets = _graph({})
    up = assets[0]
    res = resources(tmp_path)
    dg.materialize([up], instance=instance, resources=res, partition_key=DAYS[1])
    alone = data_version(instance, "up", DAYS[1])
    dg.materialize([up], instance=instance, resources=res, tags=range_tags(DAYS[0], DAYS[-1]))
    assert data_version(instance, "up", DAYS[1]) == alone


def test_a_changed_day_propagates_only_along_its_own_partitions(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """raw -> features -> drift (+ an unpartitioned reference), each day-partitioned, each one run
    over the range: re-running the range with one changed raw day moves only that day."""
    values: dict[str, float] = {}
    up, down, _ = _graph(values)

    @dg.asset
    def ref() -> pl.DataFrame:
        return pl.DataFrame({"mean": [1.0]})

    @dg.asset(partitions_def=DAILY, backfill_policy=SINGLE_RUN, metadata={"partition_expr": "date"})
    def drift(down: pl.DataFrame, ref: pl.DataFrame) -> pl.DataFrame:
        return down.group_by("date", maintain_order=True).agg(
            (pl.col("w").mean() - ref["mean"][0]).alias("shift")
        )

    assets = [up, down, ref, drift]
    res = resources(tmp_path)
    tags = range_tags(DAYS[0], DAYS[-1])
    assert dg.materialize(assets, instance=instance, resources=res, tags=tags).success
    before = {d: data_version(instance, "drift", d) for d in DAYS}

    values["2024-01-02"] = 50.0
    assert dg.materialize([up, down], instance=instance, resources=res, tags=tags).success
    for d in DAYS:
        expected = StaleStatus.STALE if d == "2024-01-02" else StaleStatus.FRESH
        assert stale_status(instance, assets, "drift", d) == expected, d
    assert dg.materialize(
        assets, selection=[drift], instance=instance, resources=res, tags=tags
    ).success
    after = {d: data_version(instance, "drift", d) for d in DAYS}
    assert [d for d in DAYS if after[d] != before[d]] == ["2024-01-02"]
    assert all(stale_status(instance, assets, "drift", d) == StaleStatus.FRESH for d in DAYS)


def test_input_versions_follow_the_partition_mapping(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """A day reading itself and the day before records the combination of those two versions."""
    import hashlib

    up = _graph({})[0]

    @dg.asset(
        partitions_def=DAILY,
        backfill_policy=SINGLE_RUN,
        metadata={"partition_expr": "date"},
        ins={
            "up": dg.AssetIn(
                partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1),
                metadata={"allow_missing_partitions": True},
            )
        },
    )
    def rolling(context: dg.AssetExecutionContext, up: pl.DataFrame) -> pl.DataFrame:
        days = [dt.date.fromisoformat(d) for d in context.partition_keys]
        return up.filter(pl.col("date").is_in(days))

    res = resources(tmp_path)
    tags = range_tags(DAYS[0], DAYS[-1])
    assert dg.materialize([up], instance=instance, resources=res, tags=tags).success
    assert dg.materialize(
        [up, rolling], selection=[rolling], instance=instance, resources=res, tags=tags
    ).success
    v = {d: data_version(instance, "up", d) for d in DAYS}
    tag = get_input_data_version_tag(dg.AssetKey("up"))
    [first] = materializations(instance, "rolling", DAYS[0])
    assert first.tags[tag] == v[DAYS[0]]  # no day before the first
    [third] = materializations(instance, "rolling", DAYS[2])
    both = hashlib.sha256((v[DAYS[1]] + v[DAYS[2]]).encode()).hexdigest()
    assert third.tags[tag] == both
