"""``frames.DataFrame`` / ``frames.LazyFrame`` annotations in real runs with PolarsIOManager."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
from polars.testing import assert_frame_equal

from mlx_resources.io_managers.frames import DataFrame, LazyFrame, is_lazy_frame_type
from tests.io_managers.helpers import frame, resources


def test_lazy_and_eager_inputs_by_frames_types(tmp_path: Path, instance: dg.DagsterInstance):
    """A ``LazyFrame`` input gets a lazy scan, a ``DataFrame`` one a frame, next to assets
    annotated with the polars classes themselves (no clash of type names in one job)."""
    original = frame(200)
    seen: dict[str, object] = {}

    @dg.asset
    def up() -> DataFrame:
        return original

    @dg.asset
    def lazy(up: LazyFrame) -> dg.Output[DataFrame]:
        seen["lazy"] = up
        return dg.Output(up.filter(pl.col("id") < 10).collect())

    @dg.asset
    def eager(up: DataFrame) -> pl.DataFrame:
        seen["eager"] = up
        return up.head(3)

    @dg.asset
    def polars_lazy(up: pl.LazyFrame) -> pl.DataFrame:
        seen["polars_lazy"] = up
        return up.collect()

    result = dg.materialize(
        [up, lazy, eager, polars_lazy], instance=instance, resources=resources(tmp_path)
    )
    assert result.success
    assert isinstance(seen["lazy"], pl.LazyFrame)
    assert isinstance(seen["polars_lazy"], pl.LazyFrame)
    assert isinstance(seen["eager"], pl.DataFrame)
    assert_frame_equal(seen["eager"], original)
    assert lazy.op.input_defs[0].dagster_type is LazyFrame
    assert up.op.output_defs[0].dagster_type is DataFrame


def test_a_non_frame_output_fails_its_type_check(tmp_path: Path, instance: dg.DagsterInstance):
    @dg.asset
    def not_a_frame() -> DataFrame:
        return {"id": [1, 2]}  # type: ignore[return-value]

    result = dg.materialize(
        [not_a_frame], instance=instance, resources=resources(tmp_path), raise_on_error=False
    )
    assert not result.success
    checks = [
        e.event_specific_data.type_check_data
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT"
    ]
    failed = [c for c in checks if not c.success]
    assert failed
    assert "expected a polars.DataFrame, got builtins.dict" in (failed[0].description or "")


def test_is_lazy_frame_type():
    assert is_lazy_frame_type(LazyFrame)
    assert not is_lazy_frame_type(DataFrame)
    assert is_lazy_frame_type(dg.PythonObjectDagsterType(pl.LazyFrame))
    assert not is_lazy_frame_type(dg.PythonObjectDagsterType(pl.DataFrame))
    assert not is_lazy_frame_type(dg.PythonObjectDagsterType(dict))
