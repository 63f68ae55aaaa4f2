"""A stored partition truncated at rest: a clear error on read, and the planner recomputes it."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from mlx_assets.partitions import DAILY_2013
from mlx_resources.io_managers import CorruptPartitionFileError
from tests.faults._driver import SMALL_DAYS
from tests.faults.test_kill_points import _run_driver


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_partition_is_named_on_read_and_planned_again(home, damage):
    rc, out = _run_driver("job", "reference", "daily")
    assert rc == 0, out[-3000:]
    from mlx_assets.build import build_definitions
    from mlx_assets.lifecycle import plan
    from mlx_plugins.kernel.composition import load_composition

    defs = build_definitions(load_composition())
    day = SMALL_DAYS[2]
    path = next((home / "data").rglob(f"flight_features/{day}.*"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\0garbage" * 100)

    upstream = dg.AssetSpec("flight_features", partitions_def=DAILY_2013)

    @dg.asset(partitions_def=DAILY_2013)
    def probe(flight_features: pl.DataFrame) -> None:
        assert flight_features.height > 0

    with pytest.raises(CorruptPartitionFileError) as err:
        dg.materialize(
            [upstream, probe],
            partition_key=day,
            resources={"io_manager": defs.resources["io_manager"]},
            instance=dg.DagsterInstance.ephemeral(),
        )
    msg = str(err.value)
    assert f"asset 'flight_features' partition '{day}'" in msg and str(path) in msg
    assert "re-materialize" in msg

    with dg.DagsterInstance.get() as instance:
        todo = plan(instance, defs, partitions=SMALL_DAYS)
    bad = {(f.asset, f.partition) for f in todo.bad}
    assert ("flight_features", day) in bad
    assert day in todo.partitions
