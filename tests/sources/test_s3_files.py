"""The ``files`` data source on ``s3://`` against moto's S3 server on loopback: the contract,
only the days asked for are opened, storage options (and ``{env:}`` credentials) reach both
fsspec (listing) and polars' own S3 reader, and wrong credentials are one clear error naming
the bucket and the fix."""

from __future__ import annotations

import datetime as dt
import io

import polars as pl
import pytest

from mlx_plugins.data_sources.files import FilesSource, FileTable
from mlx_plugins.kernel.object_store import polars_options
from mlx_plugins.testing import DataSourceContract
from tests.sources._s3_server import S3
from tests.sources.conftest import DAYS


def _day_frame(day: dt.date, n: int = 4) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": pl.Series(range(n), dtype=pl.Int64),
            "spend": [float(i) * day.day for i in range(n)],
            "segment": ["a", "b"] * (n // 2),
        }
    )


def _put(s3: S3, url: str, df: pl.DataFrame, fmt: str = "parquet") -> None:
    buf = io.BytesIO()
    if fmt == "parquet":
        df.write_parquet(buf)
    elif fmt == "csv":
        df.write_csv(buf)
    else:
        df.write_ipc(buf)
    bucket, _, key = url.removeprefix("s3://").partition("/")
    s3.client().put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def _hive(s3: S3) -> str:
    root = s3.prefix() + "/events"
    for day in DAYS:
        _put(s3, f"{root}/day={day.isoformat()}/part-0.parquet", _day_frame(day))
    return root


class TestS3FilesContract(DataSourceContract):
    sample_partition = DAYS[2]

    @pytest.fixture
    def plugin(self, s3: S3) -> FilesSource:
        root = _hive(s3)
        csv = s3.prefix() + "/csv"
        for day in DAYS:
            _put(s3, f"{csv}/{day}.csv", _day_frame(day).with_columns(day=pl.lit(day)), "csv")
        ref = s3.prefix() + "/ref/segments.arrow"
        _put(s3, ref, pl.DataFrame({"segment": ["a", "b"], "label": ["A", "B"]}), "ipc")
        return FilesSource(
            files={
                "events": FileTable(path=root, date_column="day", hive=True),
                "csv_events": FileTable(path=f"{csv}/*.csv", date_column="day"),
                "segments": FileTable(path=ref),
            },
            storage_options=s3.options(),
        )


def test_s3_hive_reads_only_the_days_asked_for(s3):
    root = _hive(s3)
    bad = f"{root}/day={DAYS[4].isoformat()}/part-0.parquet"
    s3.client().put_object(
        Bucket=s3.bucket, Key=bad.split("/", 3)[3], Body=b"not parquet at all"
    )  # never opened: not in the range read
    src = FilesSource(
        files={"t": FileTable(path=root, date_column="day", hive=True)},
        storage_options=s3.options(),
    )
    df = src.read("t", DAYS[1], DAYS[2])
    assert sorted(set(df["day"].to_list())) == [DAYS[1], DAYS[2]]
    assert df.height == 8
    assert df.filter(pl.col("day") == DAYS[2])["spend"].to_list() == [0.0, 3.0, 6.0, 9.0]
    assert src.scan("t", DAYS[1], DAYS[1]).select("spend").collect().height == 4


def test_wrong_credentials_name_the_bucket_and_the_fix(s3):
    root = _hive(s3)
    src = FilesSource(
        files={"t": FileTable(path=root, date_column="day", hive=True)},
        storage_options=s3.options(secret="wrong-secret-value"),
    )
    status = src.check_health()
    assert not status.healthy
    assert f"S3 refused the credentials for bucket '{s3.bucket}'" in status.detail
    assert "Fix: set storage_options key and secret" in status.detail
    with pytest.raises(PermissionError, match=r"files table 't': S3 refused the credentials"):
        src.read("t", DAYS[0], DAYS[0])


def test_a_missing_bucket_is_named(s3):
    src = FilesSource(
        files={"t": FileTable(path="s3://no-such-bucket-here/x/", format="parquet")},
        storage_options=s3.options(),
    )
    with pytest.raises(FileNotFoundError, match="S3 bucket 'no-such-bucket-here' does not exist"):
        src.read("t")


def test_an_unreachable_endpoint_names_the_bucket_and_endpoint_url(s3):
    """Nobody answers at endpoint_url: a ConnectionError (a run's retry policy may try again)
    naming the bucket and the field to fix, at health and at a read; never the secret."""
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    src = FilesSource(
        files={"t": FileTable(path=s3.prefix() + "/events", date_column="day", hive=True)},
        storage_options=s3.options(endpoint_url=dead, secret="secret-of-a-dead-end"),
    )
    status = src.check_health()
    assert not status.healthy
    assert status.detail.startswith("ConnectionError: files table 't': cannot reach the S3")
    assert f"bucket '{s3.bucket}'" in status.detail
    assert "Fix: check storage_options endpoint_url" in status.detail
    assert "secret-of-a-dead-end" not in status.detail
    with pytest.raises(ConnectionError, match="cannot reach the S3 endpoint"):
        src.read("t", DAYS[0], DAYS[0])


def test_credentials_from_env_through_the_composition(s3, tmp_path, monkeypatch, capsys):
    """``{env: NAME}`` in storage_options: read at use, never printed; mlx health says ok, and
    with a wrong secret FAIL naming the bucket (exit 1, no traceback)."""
    from mlx_assets.cli import main

    root = _hive(s3)
    monkeypatch.setenv("S3_TEST_KEY", s3.key)
    monkeypatch.setenv("S3_TEST_SECRET", s3.secret)
    comp = tmp_path / "mlx.yaml"
    comp.write_text(
        "plugins:\n"
        "  ml_platform: local_torch\n"
        "  drift_detector: polars\n"
        "  data_source:\n"
        "    - name: lake\n"
        "      plugin: files\n"
        "      config:\n"
        "        storage_options:\n"
        f"          endpoint_url: {s3.endpoint}\n"
        "          key: {env: S3_TEST_KEY}\n"
        "          secret: {env: S3_TEST_SECRET}\n"
        f"        files: {{events: {{path: '{root}', date_column: day, hive: true}}}}\n"
    )
    assert main(["health", str(comp)]) == 0
    assert "ok  lake" in capsys.readouterr().out
    monkeypatch.setenv("S3_TEST_SECRET", "wrong-secret-from-env")
    assert main(["health", str(comp)]) == 1
    out = capsys.readouterr()
    line = next(x for x in out.out.splitlines() if " lake " in x)
    assert line.startswith("FAIL") and f"bucket '{s3.bucket}'" in line
    assert "wrong-secret-from-env" not in out.out + out.err and "Traceback" not in out.err


def test_polars_options_translate_the_s3fs_vocabulary():
    opts = polars_options(
        {
            "endpoint_url": "http://127.0.0.1:9000",
            "key": "K",
            "secret": "S",
            "default_block_size": 1,
        }
    )
    assert opts == {
        "aws_endpoint_url": "http://127.0.0.1:9000",
        "aws_access_key_id": "K",
        "aws_secret_access_key": "S",
        "aws_allow_http": "true",
        "aws_region": "us-east-1",
    }
    assert polars_options({"client_kwargs": {"region_name": "eu-west-1"}, "anon": True}) == {
        "aws_region": "eu-west-1",
        "aws_skip_signature": "true",
    }
    assert polars_options({}) is None


class TestS3SourceContract(TestS3FilesContract):
    """The ``s3`` plugin: the files reader with s3:// paths only."""

    @pytest.fixture
    def plugin(self, s3: S3) -> FilesSource:
        from mlx_plugins.data_sources.s3 import S3Source

        root = _hive(s3)
        return S3Source(
            files={"events": FileTable(path=root, date_column="day", hive=True)},
            storage_options=s3.options(),
        )


def test_the_s3_plugin_refuses_a_local_path(tmp_path):
    from pydantic import ValidationError

    from mlx_plugins.data_sources.s3 import S3Source

    with pytest.raises(ValidationError, match=r"files\.t\.path .* is not an s3:// URL"):
        S3Source(files={"t": FileTable(path=str(tmp_path))})


def test_reads_in_a_dagster_run_with_credentials_from_env_vars(s3, monkeypatch):
    import dagster as dg

    root = _hive(s3)
    monkeypatch.setenv("S3_RUN_KEY", s3.key)
    monkeypatch.setenv("S3_RUN_SECRET", s3.secret)
    lake = FilesSource(
        files={"events": FileTable(path=root, date_column="day", hive=True)},
        storage_options={
            "endpoint_url": s3.endpoint,
            "key": dg.EnvVar("S3_RUN_KEY"),
            "secret": dg.EnvVar("S3_RUN_SECRET"),
        },
    )
    got: dict[str, pl.DataFrame] = {}

    @dg.asset
    def events(lake: FilesSource) -> None:
        got["df"] = lake.read("events", DAYS[0], DAYS[1])

    assert dg.materialize([events], resources={"lake": lake}).success
    assert got["df"].height == 8
