"""Round trips through PolarsIOManager in real Dagster runs: formats, lazy inputs, metadata."""

from pathlib import Path

import dagster as dg
import fsspec
import polars as pl
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from polars.testing import assert_frame_equal

from mlx_resources.io_managers import PolarsIOManager, content_hash, polars_output
from tests.io_managers.helpers import frame, materializations, resources, temp_files

FORMATS = [
    ("ipc", "uncompressed"),
    ("ipc", "lz4"),
    ("ipc", "zstd"),
    ("parquet", "zstd"),
    ("parquet", "lz4"),
    ("parquet", "uncompressed"),
]


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_round_trip_dataframe_and_lazyframe(
    tmp_path: Path, instance: dg.DagsterInstance, fmt: str, compression: str
) -> None:
    original = frame(5000).with_columns(
        pl.col("label").cast(pl.Categorical), day=pl.date(2024, 1, 1), maybe=pl.lit(None, pl.Int32)
    )
    seen: dict[str, object] = {}

    @dg.asset
    def up() -> pl.DataFrame:
        return original

    @dg.asset
    def eager(up: pl.DataFrame) -> pl.DataFrame:
        seen["eager"] = up
        return up.head(3)

    @dg.asset
    def lazy(up: pl.LazyFrame) -> pl.DataFrame:
        seen["lazy"] = up
        return up.select(pl.col("x").sum()).collect()

    result = dg.materialize(
        [up, eager, lazy],
        instance=instance,
        resources=resources(tmp_path, format=fmt, compression=compression),
    )
    assert result.success
    ext = ".arrow" if fmt == "ipc" else ".parquet"
    assert (tmp_path / f"up{ext}").is_file()
    assert isinstance(seen["eager"], pl.DataFrame)
    assert_frame_equal(seen["eager"], original)
    assert isinstance(seen["lazy"], pl.LazyFrame)
    assert_frame_equal(seen["lazy"].collect(), original)
    assert temp_files(tmp_path) == []


def test_lazy_input_filter_and_projection(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    @dg.asset
    def up() -> pl.DataFrame:
        return frame(100)

    @dg.asset
    def projected(up: pl.LazyFrame) -> pl.DataFrame:
        assert isinstance(up, pl.LazyFrame)
        return up.filter(pl.col("id") < 10).select("id").collect()

    for fmt in ("ipc", "parquet"):
        result = dg.materialize(
            [up, projected], instance=instance, resources=resources(tmp_path / fmt, format=fmt)
        )
        out = pl.read_ipc(tmp_path / fmt / "projected.arrow") if fmt == "ipc" else None
        if out is None:
            out = pl.read_parquet(tmp_path / fmt / "projected.parquet")
        assert result.success
        assert out.columns == ["id"]
        assert out["id"].to_list() == list(range(10))


def test_metadata_recorded(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    data = frame(1234)

    @dg.asset(key_prefix=["team", "ns"])
    def up() -> pl.DataFrame:
        return data

    dg.materialize([up], instance=instance, resources=resources(tmp_path))
    path = tmp_path / "team" / "ns" / "up.arrow"
    [mat] = materializations(instance, "team/ns/up")
    md = mat.metadata
    assert md["dagster/row_count"] == dg.MetadataValue.int(1234)
    schema = md["dagster/column_schema"].value
    assert isinstance(schema, dg.TableSchema)
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", "Int64"),
        ("x", "Float64"),
        ("label", "String"),
    ]
    assert md["byte_size"].value == path.stat().st_size
    assert md["path"].value == str(path)
    assert md["content_hash"].value == content_hash(data)
    # The content hash is the materialization's data version.
    assert mat.tags[DATA_VERSION_TAG] == content_hash(data)


def test_lazyframe_output_is_collected(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    @dg.asset
    def up() -> pl.LazyFrame:
        return frame(50).lazy().filter(pl.col("id") % 2 == 0)

    dg.materialize([up], instance=instance, resources=resources(tmp_path))
    assert pl.read_ipc(tmp_path / "up.arrow")["id"].to_list() == list(range(0, 50, 2))


def test_non_frame_output_is_a_clear_error(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    @dg.asset
    def up() -> dict:
        return {"not": "a frame"}

    with pytest.raises(dg.Failure, match=r"asset 'up'.*expected a polars DataFrame.*Fix:"):
        dg.materialize([up], instance=instance, resources=resources(tmp_path))


def test_remote_fsspec_location(instance: dg.DagsterInstance) -> None:
    """The fsspec code path (temp key + mv), exercised with fsspec's in-memory filesystem."""
    fs = fsspec.filesystem("memory")
    base = "memory://mlx-io-test/root"
    daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-03")

    @dg.asset(partitions_def=daily)
    def up(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return frame(10, seed=int(context.partition_key[-1]))

    @dg.asset
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up

    try:
        for fmt in ("ipc", "parquet"):
            res = resources(f"{base}/{fmt}", format=fmt)
            for key in ("2024-01-01", "2024-01-02"):
                dg.materialize(
                    [up, down], selection=[up], partition_key=key, instance=instance, resources=res
                )
            dg.materialize([up, down], selection=[down], instance=instance, resources=res)
            ext = "arrow" if fmt == "ipc" else "parquet"
            names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"/mlx-io-test/root/{fmt}"))
            assert names == [f"2024-01-01.{ext}", f"2024-01-02.{ext}", f"down.{ext}"]
            with fs.open(f"/mlx-io-test/root/{fmt}/down.{ext}", "rb") as fh:
                stored = pl.read_ipc(fh) if fmt == "ipc" else pl.read_parquet(fh)
            assert_frame_equal(stored, pl.concat([frame(10, seed=1), frame(10, seed=2)]))
    finally:
        fs.rm("/mlx-io-test", recursive=True)


def test_switching_format_reads_old_files_and_replaces_them(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset
    def up() -> pl.DataFrame:
        return frame(20)

    @dg.asset
    def down(up: pl.DataFrame) -> pl.DataFrame:
        return up.head(5)

    dg.materialize([up, down], instance=instance, resources=resources(tmp_path, format="ipc"))
    # Parquet config still finds the Arrow file written before...
    dg.materialize(
        [up, down],
        selection=[down],
        instance=instance,
        resources=resources(tmp_path, format="parquet"),
    )
    assert pl.read_parquet(tmp_path / "down.parquet").height == 5
    # ...and rewriting the asset leaves only the new format behind.
    assert not (tmp_path / "down.arrow").exists()
    dg.materialize([up], instance=instance, resources=resources(tmp_path, format="parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["down.parquet", "up.parquet"]


def test_polars_output_sets_content_data_version(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    data = frame(10)

    @dg.asset(io_manager_key="pickle")
    def up() -> dg.Output[pl.DataFrame]:
        return polars_output(data.lazy())

    dg.materialize(
        [up],
        instance=instance,
        resources={"pickle": dg.FilesystemIOManager(base_dir=str(tmp_path))},
    )
    assert materializations(instance, "up")[-1].tags[DATA_VERSION_TAG] == content_hash(data)


def test_content_hash_properties() -> None:
    df = frame(100)
    chunked = pl.concat([df.head(40), df.tail(60)], rechunk=False)
    assert chunked.n_chunks() == 2
    assert content_hash(chunked) == content_hash(df)  # layout-independent
    assert content_hash(df.reverse()) != content_hash(df)  # order-sensitive
    assert content_hash(df.with_columns(pl.col("id").cast(pl.Int32))) != content_hash(df)
    assert content_hash(df.rename({"x": "y"})) != content_hash(df)
    changed = df.with_columns(
        pl.when(pl.col("id") == 50).then(0.5).otherwise(pl.col("x")).alias("x")
    )
    assert content_hash(changed) != content_hash(df)
    assert content_hash(df.head(0)) != content_hash(pl.DataFrame())


def test_config_rejects_unknown_format() -> None:
    with pytest.raises(Exception, match="format"):
        PolarsIOManager(base_path="/x", format="csv")  # type: ignore[arg-type]
