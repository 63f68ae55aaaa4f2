"""Whatever PolarsIOManager accepts it reads back identically; what it can't store it refuses.

Every polars dtype (nested ones too) through both formats and every compression, read back with
the IO manager itself (issue 9 item 2: an Int128 column used to be written, versioned, and then
unreadable by every downstream load).
"""

import datetime as dt
import decimal
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from polars.testing import assert_frame_equal

from mlx_resources.io_managers import PolarsIOManager, UnstorableDtypeError, content_hash
from tests.io_managers.helpers import materializations, resources, temp_files

FORMATS = [
    ("ipc", "uncompressed"),
    ("ipc", "lz4"),
    ("ipc", "zstd"),
    ("parquet", "uncompressed"),
    ("parquet", "lz4"),
    ("parquet", "zstd"),
]
_INSTANT = dt.datetime(2024, 3, 10, 1, 30, 15, 123456)


def _columns() -> dict[str, pl.Series]:
    cols: dict[str, pl.Series] = {}
    ints = [pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64]
    for t in ints:
        cols[str(t)] = pl.Series([1, None, 7], dtype=t)
    for name in ("Int128", "UInt128"):
        if hasattr(pl, name):
            cols[name] = pl.Series([2**100, None, 3], dtype=getattr(pl, name))
    for name in ("Float16", "Float32", "Float64"):
        if hasattr(pl, name):
            cols[name] = pl.Series([1.5, None, float("inf")], dtype=getattr(pl, name))
    cols["Boolean"] = pl.Series([True, None, False])
    cols["String"] = pl.Series(["a", None, "ü"])
    cols["Binary"] = pl.Series([b"\x00x", None, b""])
    cols["Null"] = pl.Series([None, None, None], dtype=pl.Null)
    cols["Decimal(10,2)"] = pl.Series(
        [decimal.Decimal("1.25"), None, decimal.Decimal("-3.10")], dtype=pl.Decimal(10, 2)
    )
    cols["Decimal(38,5)"] = pl.Series(
        [decimal.Decimal("12345678901234567890.12345"), None, decimal.Decimal(0)],
        dtype=pl.Decimal(38, 5),
    )
    cols["Date"] = pl.Series([dt.date(2024, 1, 1), None, dt.date(1969, 12, 31)])
    cols["Time"] = pl.Series([dt.time(1, 2, 3, 4), None, dt.time(23, 59, 59, 999999)])
    for unit in ("ms", "us", "ns"):
        cols[f"Duration({unit})"] = pl.Series(
            [dt.timedelta(days=-1, microseconds=5000), None, dt.timedelta(0)]
        ).cast(pl.Duration(unit))
        naive = pl.Series([_INSTANT, None, dt.datetime(1900, 1, 1)]).cast(pl.Datetime(unit))
        cols[f"Datetime({unit})"] = naive
        for tz in ("UTC", "America/New_York", "Asia/Kolkata"):
            cols[f"Datetime({unit},{tz})"] = naive.dt.replace_time_zone(tz, non_existent="null")
    cols["Categorical"] = pl.Series(["b", None, "a"], dtype=pl.Categorical)
    cols["Enum"] = pl.Series(["b", None, "a"], dtype=pl.Enum(["c", "b", "a"]))
    cols["List(Int64)"] = pl.Series([[1, 2], None, []], dtype=pl.List(pl.Int64))
    cols["List(List(String))"] = pl.Series([[["a"], []], None, [None]])
    cols["List(Categorical)"] = pl.Series([["x"], None, []], dtype=pl.List(pl.Categorical))
    cols["List(Enum)"] = pl.Series([["x"], None, []], dtype=pl.List(pl.Enum(["y", "x"])))
    cols["List(Decimal)"] = pl.Series(
        [[decimal.Decimal("1.5")], None, []], dtype=pl.List(pl.Decimal(10, 1))
    )
    cols["Array(Int64,2)"] = pl.Series([[1, 2], None, [3, 4]], dtype=pl.Array(pl.Int64, 2))
    cols["Array(Float64,(2,2))"] = pl.Series(
        [[[1.0, 2.0], [3.0, 4.0]], None, [[0.0, 0.0], [0.0, 0.0]]],
        dtype=pl.Array(pl.Float64, (2, 2)),
    )
    cols["Struct"] = pl.Series([{"a": 1, "b": "x"}, None, {"a": None, "b": None}])
    cols["Struct(nested)"] = pl.Series(
        [
            {"l": [1], "t": dt.time(1), "d": dt.timedelta(seconds=1), "e": "p"},
            None,
            {"l": None, "t": None, "d": None, "e": None},
        ],
        dtype=pl.Struct(
            {
                "l": pl.List(pl.Int32),
                "t": pl.Time,
                "d": pl.Duration("ns"),
                "e": pl.Enum(["p", "q"]),
            }
        ),
    )
    if hasattr(pl, "Int128"):
        cols["Struct(Int128)"] = pl.Series(
            [{"a": 2**90}, None, {"a": -1}], dtype=pl.Struct({"a": pl.Int128})
        )
        cols["List(Int128)"] = pl.Series([[2**90], None, []], dtype=pl.List(pl.Int128))
    return cols


COLUMNS = _columns()


def _contexts() -> tuple[dg.OutputContext, dg.InputContext]:
    """Built once per test: each build makes an ephemeral instance (about 0.1 s)."""
    key = dg.AssetKey("asset_x")
    out = dg.build_output_context(asset_key=key)
    dagster_type = dg.PythonObjectDagsterType(pl.DataFrame)
    return out, dg.build_input_context(asset_key=key, dagster_type=dagster_type)


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_every_dtype_round_trips(tmp_path: Path, fmt: str, compression: str) -> None:
    """One column per dtype, each stored and loaded on its own; lists every dtype that fails."""
    failures: dict[str, str] = {}
    out_ctx, in_ctx = _contexts()
    for i, (name, column) in enumerate(COLUMNS.items()):
        df = pl.DataFrame({"c": column})
        try:
            io = PolarsIOManager(
                base_path=str(tmp_path / str(i)), format=fmt, compression=compression
            )  # type: ignore[arg-type]
            io.handle_output(out_ctx, df)
            out_ctx.consume_logged_metadata()  # the context is reused for the next dtype
            back = io.load_input(in_ctx)
            assert isinstance(back, pl.DataFrame)
            assert back.schema == df.schema, f"schema {back.schema} != {df.schema}"
            assert_frame_equal(back, df)
            assert content_hash(back) == content_hash(df), "content hash differs"
        except Exception as e:  # collect, so one run names every dtype that fails
            failures[name] = f"{type(e).__name__}: {str(e)[:200]}"
    assert failures == {}


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_all_dtypes_in_one_asset_downstream_reads_them(
    tmp_path: Path, instance: dg.DagsterInstance, fmt: str, compression: str
) -> None:
    """In a real run: the data version recorded is the hash of what downstream reads back."""
    original = pl.DataFrame(COLUMNS)
    seen: dict[str, pl.DataFrame] = {}

    @dg.asset
    def wide() -> pl.DataFrame:
        return original

    @dg.asset
    def reader(wide: pl.DataFrame) -> pl.DataFrame:
        seen["wide"] = wide
        return wide.select(pl.len())

    res = resources(tmp_path, format=fmt, compression=compression)
    assert dg.materialize([wide, reader], instance=instance, resources=res).success
    assert_frame_equal(seen["wide"], original)
    [mat] = materializations(instance, "wide")
    assert mat.tags[DATA_VERSION_TAG] == content_hash(seen["wide"])


@pytest.mark.parametrize(
    "column",
    [
        pl.Series("obj", [object(), None], dtype=pl.Object),
    ],
    ids=["Object"],
)
@pytest.mark.parametrize("fmt", ["ipc", "parquet"])
def test_unstorable_dtype_is_refused_before_any_write(
    tmp_path: Path, instance: dg.DagsterInstance, column: pl.Series, fmt: str
) -> None:
    @dg.asset
    def objects() -> pl.DataFrame:
        return pl.DataFrame({"ok": [1, 2]}).with_columns(column)

    with pytest.raises(UnstorableDtypeError) as err:
        dg.materialize([objects], instance=instance, resources=resources(tmp_path, format=fmt))
    msg = str(err.value)
    assert "asset 'objects'" in msg and "'obj'" in msg and "Object" in msg and "Fix:" in msg
    assert materializations(instance, "objects") == []  # no data version recorded
    assert temp_files(tmp_path) == []
    assert not list(tmp_path.rglob("objects*"))


def test_nested_object_dtypes_are_found() -> None:
    """polars can't build nested Object series today; the check still covers the schema."""
    from mlx_resources.io_managers._polars_files import unstorable_columns

    schema = {
        "a": pl.Int64(),
        "b": pl.List(pl.Object()),
        "c": pl.Struct({"x": pl.Array(pl.Object(), 2)}),
        "d": pl.Struct({"x": pl.List(pl.Int128())}),
    }
    assert [c for c, _ in unstorable_columns(schema)] == ["b", "c"]
