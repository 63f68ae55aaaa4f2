"""PolarsIOManager on ``s3://`` against moto's S3 server on loopback, in real Dagster runs: one
object per partition, data versions equal to the local ones (content hashes), a partition large
enough for a multipart upload, failed and killed writes leaving the previous object readable,
credentials from ``{env:}``, and wrong credentials as one clear error naming the bucket."""

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlx_resources.io_managers import PolarsIOManager, _polars_files, content_hash
from tests.io_managers.helpers import data_version, frame, range_tags
from tests.sources._s3_server import S3, s3_server

REPO = Path(__file__).resolve().parents[2]
DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")
BLOCK = 5 * 2**20  # S3's smallest multipart part


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


def _key(url: str) -> str:
    return url.removeprefix("s3://").split("/", 1)[1]


def _objects(s3: S3, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=_key(prefix))
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _uploads(s3: S3, prefix: str) -> list[str]:
    listed = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=_key(prefix))
    return [u["Key"] for u in listed.get("Uploads", [])]


def _day_frame(day: str, n: int = 1000) -> pl.DataFrame:
    return frame(n, seed=int(day[-2:])).with_columns(day=pl.lit(day).str.to_date())


def _partitioned(seen: dict[str, pl.DataFrame]) -> list[dg.AssetsDefinition]:
    @dg.asset(partitions_def=DAYS)
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return _day_frame(context.partition_key)

    @dg.asset(partitions_def=DAYS)
    def doubled(context: dg.AssetExecutionContext, events: pl.DataFrame) -> pl.DataFrame:
        seen[context.partition_key] = events
        return events.with_columns(pl.col("x") * 2)

    return [events, doubled]


@pytest.mark.parametrize("fmt", ["ipc", "parquet"])
def test_partitions_round_trip_as_one_object_each_with_local_data_versions(s3, tmp_path, fmt):
    base = s3.prefix()
    seen: dict[str, pl.DataFrame] = {}
    versions = {}
    for root, options in ((base, s3.options()), (str(tmp_path), {})):
        with dg.DagsterInstance.ephemeral() as instance:
            io = PolarsIOManager(base_path=root, storage_options=options, format=fmt)
            for day in ("2024-01-01", "2024-01-02"):
                result = dg.materialize(
                    _partitioned(seen),
                    instance=instance,
                    resources={"io_manager": io},
                    partition_key=day,
                )
                assert result.success
                assert_frame_equal(seen[day], _day_frame(day))
            versions[root] = [
                data_version(instance, k, d)
                for k in ("events", "doubled")
                for d in ("2024-01-01", "2024-01-02")
            ]
    assert versions[base] == versions[str(tmp_path)]  # content hashes, storage-independent
    ext = ".arrow" if fmt == "ipc" else ".parquet"
    assert _objects(s3, base) == [
        f"{_key(base)}/{asset}/{day}{ext}"
        for asset in ("doubled", "events")
        for day in ("2024-01-01", "2024-01-02")
    ]
    assert _uploads(s3, base) == []  # every upload completed, none left open


def test_a_single_run_backfill_writes_every_partition_before_publishing_any(s3):
    base = s3.prefix()

    @dg.asset(partitions_def=DAYS, metadata={"partition_expr": "day"})
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return pl.concat([_day_frame(k, n=10) for k in context.partition_keys])

    io = PolarsIOManager(base_path=base, storage_options=s3.options())
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [events],
            instance=instance,
            resources={"io_manager": io},
            tags=range_tags("2024-01-01", "2024-01-03"),
        )
        assert result.success
        versions = {d: data_version(instance, "events", d) for d in ("2024-01-01", "2024-01-03")}
    assert _objects(s3, base) == [f"{_key(base)}/events/2024-01-0{d}.arrow" for d in (1, 2, 3)]
    assert _uploads(s3, base) == []
    for day, version in versions.items():
        stored = _polars_files.open_lazy(io._target(io._stem(["events"], DAYS, day))).collect()
        assert_frame_equal(stored, _day_frame(day, n=10))
        assert version == content_hash(stored)  # each partition's own content hash


def _big(day: str) -> pl.DataFrame:
    n = 700_000  # ~13 MB as uncompressed Arrow IPC: three parts of >= 5 MiB
    rng = np.random.default_rng(int(day[-2:]))
    return pl.DataFrame({"id": np.arange(n), "x": rng.random(n)}).with_columns(
        day=pl.lit(day).str.to_date()
    )


def test_a_large_partition_is_one_multipart_object(s3):
    base = s3.prefix()

    @dg.asset(partitions_def=DAYS)
    def big(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return _big(context.partition_key)

    loaded: dict[str, pl.DataFrame] = {}

    @dg.asset(partitions_def=DAYS)
    def reader(context: dg.AssetExecutionContext, big: pl.DataFrame) -> pl.DataFrame:
        loaded["big"] = big
        return big.head(1)

    io = PolarsIOManager(base_path=base, storage_options=s3.options(default_block_size=BLOCK))
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [big, reader],
            instance=instance,
            resources={"io_manager": io},
            partition_key="2024-01-03",
        )
    assert result.success
    head = s3.client().head_object(Bucket=s3.bucket, Key=f"{_key(base)}/big/2024-01-03.arrow")
    parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])  # a multipart object's ETag: "<md5>-N"
    assert parts >= 2 and head["ContentLength"] > 2 * BLOCK
    assert_frame_equal(loaded["big"], _big("2024-01-03"))
    assert _uploads(s3, base) == []


def test_a_failed_write_leaves_the_previous_object(s3, monkeypatch):
    base = s3.prefix()
    seen: dict[str, pl.DataFrame] = {}
    io = PolarsIOManager(base_path=base, storage_options=s3.options(default_block_size=BLOCK))
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(
            _partitioned(seen)[:1],
            instance=instance,
            resources={"io_manager": io},
            partition_key="2024-01-01",
        ).success
        key = f"{_key(base)}/events/2024-01-01.arrow"
        before = s3.client().head_object(Bucket=s3.bucket, Key=key)["ETag"]

        def dies_mid_write(df, target, fmt, compression):  # type: ignore[no-untyped-def]
            target.write(os.urandom(2 * BLOCK))  # enough for a part to be uploaded
            raise OSError("disk controller on fire")

        monkeypatch.setattr(_polars_files, "write_frame", dies_mid_write)
        result = dg.materialize(
            _partitioned(seen)[:1],
            instance=instance,
            resources={"io_manager": io},
            partition_key="2024-01-01",
            raise_on_error=False,
        )
        assert not result.success
    assert s3.client().head_object(Bucket=s3.bucket, Key=key)["ETag"] == before
    assert _uploads(s3, base) == []  # the upload was aborted, its parts dropped
    monkeypatch.undo()
    stored = _polars_files.open_lazy(io._target(io._stem(["events"], DAYS, "2024-01-01")))
    assert_frame_equal(stored.collect(), _day_frame("2024-01-01"))


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import polars as pl
    from upath import UPath
    from mlx_resources.io_managers import _polars_files

    endpoint, key, secret, url, block = sys.argv[1:6]
    target = UPath(url, endpoint_url=endpoint, key=key, secret=secret,
                   default_block_size=int(block))

    def slow(df, fh, fmt, compression):
        fh.write(os.urandom(2 * int(block)))  # a part goes up
        fh.flush()
        print("UPLOADING", flush=True)
        time.sleep(600)  # killed here

    _polars_files.stage(pl.DataFrame({"a": [1]}), target, "ipc", "uncompressed", writer=slow)
    """
)


def test_a_killed_writer_leaves_the_previous_object_readable(s3):
    base = s3.prefix()
    seen: dict[str, pl.DataFrame] = {}
    io = PolarsIOManager(base_path=base, storage_options=s3.options())
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(
            _partitioned(seen)[:1],
            instance=instance,
            resources={"io_manager": io},
            partition_key="2024-01-02",
        ).success
    url = f"{base}/events/2024-01-02.arrow"
    before = s3.client().head_object(Bucket=s3.bucket, Key=_key(url))["ETag"]
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, s3.endpoint, s3.key, s3.secret, url, str(BLOCK)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "UPLOADING"
        open_uploads = _uploads(s3, base)
        assert open_uploads == [_key(url)]  # mid-upload: parts stored, nothing visible
        assert s3.client().head_object(Bucket=s3.bucket, Key=_key(url))["ETag"] == before
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert s3.client().head_object(Bucket=s3.bucket, Key=_key(url))["ETag"] == before
    stored = _polars_files.open_lazy(io._target(io._stem(["events"], DAYS, "2024-01-02")))
    assert_frame_equal(stored.collect(), _day_frame("2024-01-02"))


def test_credentials_from_env_refs(s3, monkeypatch):
    monkeypatch.setenv("MLX_S3_TEST_KEY", s3.key)
    monkeypatch.setenv("MLX_S3_TEST_SECRET", s3.secret)
    base = s3.prefix()
    options = s3.options(key={"env": "MLX_S3_TEST_KEY"}, secret={"env": "MLX_S3_TEST_SECRET"})
    io = PolarsIOManager(base_path=base, storage_options=options)
    seen: dict[str, pl.DataFrame] = {}
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(
            _partitioned(seen),
            instance=instance,
            resources={"io_manager": io},
            partition_key="2024-01-03",
        ).success
    assert len(_objects(s3, base)) == 2


def test_wrong_credentials_are_one_clear_error_naming_the_bucket(s3, monkeypatch):
    monkeypatch.setenv("MLX_S3_TEST_SECRET", "wrong-secret-in-env")
    base = s3.prefix()
    io = PolarsIOManager(
        base_path=base, storage_options=s3.options(secret={"env": "MLX_S3_TEST_SECRET"})
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            _partitioned({})[:1],
            instance=instance,
            resources={"io_manager": io},
            partition_key="2024-01-01",
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    text = error.message + "".join(str(c.message) for c in [error.cause] if c)
    assert "StorageAccessError" in error.cls_name or "StorageAccessError" in text
    assert f"S3 refused the credentials for bucket '{s3.bucket}'" in text
    assert "Fix: set storage_options key and secret" in text
    assert "wrong-secret-in-env" not in text
    assert _objects(s3, base) == []


def test_loading_with_wrong_credentials_names_the_bucket(s3):
    base = s3.prefix()
    seen: dict[str, pl.DataFrame] = {}
    good = PolarsIOManager(base_path=base, storage_options=s3.options())
    bad = PolarsIOManager(base_path=base, storage_options=s3.options(secret="wrong-secret-load"))
    with dg.DagsterInstance.ephemeral() as instance:
        assets = _partitioned(seen)
        assert dg.materialize(
            assets, instance=instance, resources={"io_manager": good}, partition_key="2024-01-01"
        ).success
        result = dg.materialize(
            assets,
            selection=["doubled"],
            instance=instance,
            resources={"io_manager": bad},
            partition_key="2024-01-01",
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = failure.step_failure_data.error.to_string()
    assert "StorageAccessError" in text and "asset 'events' partition '2024-01-01'" in text
    assert f"S3 refused access to bucket '{s3.bucket}'" in text
    assert "Fix: check storage_options key and secret" in text
    assert "wrong-secret-load" not in text


def test_health_writes_reads_and_deletes_a_probe_and_names_the_bucket_when_refused(s3, tmp_path):
    """``mlx health`` checks where frames are stored: a wrong secret or a missing bucket is a
    failed check naming the bucket and the endpoint, never the secret, before any run."""
    base = s3.prefix()
    good = PolarsIOManager(base_path=base, storage_options=s3.options()).check_health()
    assert good.healthy, good.detail
    assert f"io_manager {base} (endpoint {s3.endpoint})" in good.detail
    assert _objects(s3, base) == []  # the probe is deleted

    bad = PolarsIOManager(
        base_path=base, storage_options=s3.options(secret="wrong-secret-health")
    ).check_health()
    assert not bad.healthy
    assert f"S3 refused the credentials for bucket '{s3.bucket}'" in bad.detail
    assert "wrong-secret-health" not in bad.detail

    missing = PolarsIOManager(
        base_path="s3://no-such-bucket-mlx/x", storage_options=s3.options()
    ).check_health()
    assert not missing.healthy and "'no-such-bucket-mlx'" in missing.detail

    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    unreachable = PolarsIOManager(
        base_path=base, storage_options=s3.options(endpoint_url=dead, secret="secret-dead-end")
    ).check_health()
    assert not unreachable.healthy
    assert f"cannot reach the S3 endpoint for bucket '{s3.bucket}'" in unreachable.detail
    assert "Fix: check storage_options endpoint_url" in unreachable.detail
    assert "secret-dead-end" not in unreachable.detail

    local = PolarsIOManager(base_path=str(tmp_path / "frames")).check_health()
    assert local.healthy and str(tmp_path / "frames") in local.detail
    unwritable = tmp_path / "file-not-folder"
    unwritable.write_text("x")
    refused = PolarsIOManager(base_path=str(unwritable)).check_health()
    assert not refused.healthy
    assert "cannot write there" in refused.detail and "base_path" in refused.detail
