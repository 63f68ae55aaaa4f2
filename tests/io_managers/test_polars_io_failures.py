"""Atomic writes under simulated crashes, and clear errors for missing / corrupt files."""

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlx_resources.io_managers import (
    CorruptPartitionFileError,
    MissingPartitionFileError,
    _polars_files,
)
from tests.io_managers.helpers import frame, range_tags, resources, temp_files

REAL_WRITE = _polars_files.write_frame
DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")


def _half_then_crash(df: pl.DataFrame, target, fmt: str, compression: str) -> None:
    """Write the first half of the real file bytes, then die like a crashed writer would."""
    buf = io.BytesIO()
    REAL_WRITE(df, buf, fmt, compression)
    data = buf.getvalue()
    if isinstance(target, str):
        with open(target, "wb") as fh:
            fh.write(data[: len(data) // 2])
    else:
        target.write(data[: len(data) // 2])
    raise OSError("simulated crash mid-write")


@pytest.mark.parametrize("fmt", ["ipc", "parquet"])
def test_crash_mid_write_keeps_previous_version(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    content = {"df": frame(2000, seed=1)}

    @dg.asset
    def up() -> pl.DataFrame:
        return content["df"]

    @dg.asset
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up

    res = resources(tmp_path, format=fmt)
    dg.materialize([up, down], instance=instance, resources=res)
    stored = tmp_path / f"up.{'arrow' if fmt == 'ipc' else 'parquet'}"
    before = stored.read_bytes()

    content["df"] = frame(2000, seed=2)
    monkeypatch.setattr(_polars_files, "write_frame", _half_then_crash)
    result = dg.materialize([up], instance=instance, resources=res, raise_on_error=False)
    assert not result.success
    assert stored.read_bytes() == before
    assert temp_files(tmp_path) == []

    monkeypatch.setattr(_polars_files, "write_frame", REAL_WRITE)
    dg.materialize([up, down], selection=[down], instance=instance, resources=res)
    down_file = tmp_path / stored.name.replace("up", "down")
    read = pl.read_ipc if fmt == "ipc" else pl.read_parquet
    assert_frame_equal(read(down_file), frame(2000, seed=1))


def test_crash_in_a_backfill_publishes_no_partition(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = {"v": 1.0}

    @dg.asset(partitions_def=DAILY, metadata={"partition_expr": "day"})
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return pl.DataFrame({"day": context.partition_keys, "v": [version["v"]] * 3})

    res = resources(tmp_path)
    dg.materialize(
        [events], instance=instance, resources=res, tags=range_tags("2024-01-01", "2024-01-03")
    )
    calls = {"n": 0}

    def crash_on_second(df, target, fmt, compression):
        calls["n"] += 1
        if calls["n"] == 2:
            _half_then_crash(df, target, fmt, compression)
        REAL_WRITE(df, target, fmt, compression)

    version["v"] = 2.0
    monkeypatch.setattr(_polars_files, "write_frame", crash_on_second)
    result = dg.materialize(
        [events],
        instance=instance,
        resources=res,
        tags=range_tags("2024-01-01", "2024-01-03"),
        raise_on_error=False,
    )
    assert not result.success
    assert calls["n"] == 2
    # The first partition was fully written to its temp file but never published.
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        assert pl.read_ipc(tmp_path / "events" / f"{day}.arrow")["v"].to_list() == [1.0]
    assert temp_files(tmp_path) == []


_KILL_SCRIPT = textwrap.dedent(
    """
    import io, sys, time
    import dagster as dg, polars as pl
    from mlx_resources.io_managers import PolarsIOManager, _polars_files

    real = _polars_files.write_frame

    def half_then_hang(df, target, fmt, compression):
        buf = io.BytesIO()
        real(df, buf, fmt, compression)
        with open(target, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        print("HALF", flush=True)
        time.sleep(600)

    _polars_files.write_frame = half_then_hang

    @dg.asset
    def up() -> pl.DataFrame:
        return pl.DataFrame({"x": list(range(100_000))}).with_columns(y=pl.col("x") * 3)

    dg.materialize([up], resources={"io_manager": PolarsIOManager(base_path=sys.argv[1])})
    """
)


def test_killed_writer_leaves_previous_version(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """SIGKILL mid-write: no cleanup code runs, yet the published file is the old one."""
    original = pl.DataFrame({"x": [1, 2, 3]})

    @dg.asset
    def up() -> pl.DataFrame:
        return original

    dg.materialize([up], instance=instance, resources=resources(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "HALF"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert_frame_equal(pl.read_ipc(tmp_path / "up.arrow"), original)
    # A SIGKILLed writer can't clean up: its hidden temp file stays, and is never read.
    [leftover] = temp_files(tmp_path)
    assert leftover.name.startswith(".up.arrow.tmp-")


def test_missing_file_error_names_asset_path_and_fix(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset
    def up() -> pl.DataFrame:
        return frame(5)

    @dg.asset
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up

    with pytest.raises(MissingPartitionFileError) as err:
        dg.materialize(
            [up, down], selection=[down], instance=instance, resources=resources(tmp_path)
        )
    msg = str(err.value)
    assert "asset 'up'" in msg
    assert str(tmp_path / "up.arrow") in msg
    assert "Fix: materialize asset 'up'" in msg
    assert err.value.path == str(tmp_path / "up.arrow")


def test_missing_partition_error_names_the_partition(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(partitions_def=DAILY)
    def up(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return pl.DataFrame({"day": [context.partition_key]})

    @dg.asset(partitions_def=DAILY)
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up

    res = resources(tmp_path)
    dg.materialize(
        [up, down], selection=[up], partition_key="2024-01-01", instance=instance, resources=res
    )
    with pytest.raises(MissingPartitionFileError) as err:
        dg.materialize(
            [up, down],
            selection=[down],
            partition_key="2024-01-02",
            instance=instance,
            resources=res,
        )
    msg = str(err.value)
    assert "asset 'up' partition '2024-01-02'" in msg
    assert str(tmp_path / "up" / "2024-01-02.arrow") in msg
    assert "--partition 2024-01-02" in msg
    assert err.value.partition == "2024-01-02"


@pytest.mark.parametrize("fmt", ["ipc", "parquet"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_partition_file_error(
    tmp_path: Path, instance: dg.DagsterInstance, fmt: str, damage: str
) -> None:
    @dg.asset(partitions_def=DAILY)
    def up(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return frame(500)

    @dg.asset(partitions_def=DAILY)
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up

    res = resources(tmp_path, format=fmt)
    dg.materialize(
        [up, down], selection=[up], partition_key="2024-01-02", instance=instance, resources=res
    )
    path = tmp_path / "up" / f"2024-01-02.{'arrow' if fmt == 'ipc' else 'parquet'}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a frame" * 50)

    with pytest.raises(CorruptPartitionFileError) as err:
        dg.materialize(
            [up, down],
            selection=[down],
            partition_key="2024-01-02",
            instance=instance,
            resources=res,
        )
    msg = str(err.value)
    assert "asset 'up' partition '2024-01-02'" in msg
    assert str(path) in msg
    assert "Fix: re-materialize partition '2024-01-02' of asset 'up'" in msg

    # The fix works: re-materializing replaces the bad file.
    dg.materialize([up, down], partition_key="2024-01-02", instance=instance, resources=res)
    assert path.read_bytes() == data
