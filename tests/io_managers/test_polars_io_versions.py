"""Content-hash data versions: same data keeps downstream fresh, changed data makes it stale."""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.definitions.data_version import StaleStatus

from mlx_resources.io_managers import content_hash
from tests.io_managers.helpers import data_version, frame, resources, stale_status


def _graph(content: dict[str, pl.DataFrame]) -> list[dg.AssetsDefinition]:
    @dg.asset
    def up() -> pl.DataFrame:
        return content["df"]

    @dg.asset
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up.select(pl.col("x").sum())

    return [up, down]


def test_same_content_same_version_downstream_stays_fresh(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    content = {"df": frame(300, seed=1)}
    assets = _graph(content)
    up = assets[0]
    res = resources(tmp_path)

    dg.materialize(assets, instance=instance, resources=res)
    first = data_version(instance, "up")
    assert first == content_hash(content["df"])
    assert stale_status(instance, assets, "down") == StaleStatus.FRESH

    # Same data, new object (and a different chunk layout): same version, still fresh.
    df = content["df"]
    content["df"] = pl.concat([df.head(100), df.tail(200)], rechunk=False)
    dg.materialize(assets, selection=[up], instance=instance, resources=res)
    assert data_version(instance, "up") == first
    assert stale_status(instance, assets, "down") == StaleStatus.FRESH

    # Changed data: new version, downstream stale.
    content["df"] = frame(300, seed=2)
    dg.materialize(assets, selection=[up], instance=instance, resources=res)
    assert data_version(instance, "up") != first
    assert stale_status(instance, assets, "down") == StaleStatus.STALE


def test_without_content_versions_rematerializing_makes_downstream_stale(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """Control for the test above: Dagster's default behaviour is what we are changing."""
    content = {"df": frame(300, seed=1)}
    assets = _graph(content)
    res = resources(tmp_path, data_version_from_content=False)
    dg.materialize(assets, instance=instance, resources=res)
    first = data_version(instance, "up")
    dg.materialize(assets, selection=[assets[0]], instance=instance, resources=res)
    assert data_version(instance, "up") != first
    assert stale_status(instance, assets, "down") == StaleStatus.STALE


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")
def test_explicit_output_data_version_wins(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    @dg.asset
    def up() -> dg.Output[pl.DataFrame]:
        return dg.Output(frame(10), data_version=dg.DataVersion("pinned"))

    dg.materialize([up], instance=instance, resources=resources(tmp_path))
    assert data_version(instance, "up") == "pinned"


@pytest.mark.parametrize("same", [True, False])
def test_partitioned_versions(tmp_path: Path, instance: dg.DagsterInstance, same: bool) -> None:
    daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-03")
    seed = {"v": 1}

    @dg.asset(partitions_def=daily)
    def up(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return frame(50, seed=seed["v"]).with_columns(day=pl.lit(context.partition_key))

    @dg.asset(partitions_def=daily)
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up.head(1)

    assets = [up, down]
    res = resources(tmp_path)
    for day in ("2024-01-01", "2024-01-02"):
        dg.materialize(assets, partition_key=day, instance=instance, resources=res)
    first = data_version(instance, "up", "2024-01-01")
    other = data_version(instance, "up", "2024-01-02")
    assert first != other  # the partition key column differs

    if not same:
        seed["v"] = 2
    dg.materialize(
        assets, selection=[up], partition_key="2024-01-01", instance=instance, resources=res
    )
    assert (data_version(instance, "up", "2024-01-01") == first) is same
    expected = StaleStatus.FRESH if same else StaleStatus.STALE
    assert stale_status(instance, assets, "down", "2024-01-01") == expected
    assert stale_status(instance, assets, "down", "2024-01-02") == StaleStatus.FRESH
