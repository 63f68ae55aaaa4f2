"""Enterprise sources on loopback: Snowflake pushdown and the polars IO manager on S3.

1. Snowflake (fakesnow's server behind the official connector): rows and Arrow bytes that leave
   the warehouse to read ONE day of a DAYS-day table, with the day range pushed into the SQL
   (``SnowflakeSource.read``) and without (the whole table selected, filtered in polars), and
   the median wall time of each; then rows and bytes moved for 1, 7 and DAYS days read with
   pushdown (per partition: constant if bytes moved are proportional to partitions read).
2. PolarsIOManager storage: write (stage + commit) and read back a MB-sized frame on moto's S3
   server (multipart upload) and on local disk; median MB/s of each and the ratio.

Run: ./dev bench sources   (or .venv/bin/python benchmarks/bench_sources.py)
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import load, machine, median

DAYS = 30
ROWS_PER_DAY = 2_000
REPEATS = 5
SPANS = (1, 7, DAYS)  # partitions read with pushdown, for the proportionality check
FRAME_ROWS = 2_000_000  # ~32 MB as uncompressed Arrow IPC


def bench_snowflake() -> None:
    import snowflake.connector

    from mlx_plugins.data_sources.snowflake import SnowflakeSource
    from tests.sources._snowflake_server import snowflake_server, unique_database

    start = dt.date(2024, 1, 1)
    with snowflake_server() as server:
        database = unique_database()
        args = server.connection_args(database)
        conn = snowflake.connector.connect(
            user=server.user, password=server.password, account="fakesnow", **args
        )
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {database}")
        cur.execute(f"CREATE SCHEMA {database}.PUBLIC")
        cur.execute(f"USE SCHEMA {database}.PUBLIC")
        cur.execute(
            "CREATE TABLE EVENTS AS SELECT DATEADD(day, MOD(SEQ4(), "
            f"{DAYS}), '{start}'::DATE) AS DAY, SEQ4() AS ID, UNIFORM(0::FLOAT, 1::FLOAT, "
            f"RANDOM()) AS X FROM TABLE(GENERATOR(ROWCOUNT => {DAYS * ROWS_PER_DAY}))"
        )
        conn.close()
        src = SnowflakeSource(
            account="fakesnow",
            user=server.user,
            password=server.password,
            database=database,
            schema_name="PUBLIC",
            connection_args=args,
            read_tables={
                "events": {"table": "events", "date_column": "day"},
                "events_whole": {"table": "events"},
            },
        )
        day = start + dt.timedelta(days=DAYS // 2)
        spans: dict[int, pl.DataFrame] = {}
        with src.session() as s:
            pushed, whole, t_pushed, t_whole = None, None, [], []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                pushed = s.read("events", day, day)
                t_pushed.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                whole = s.read("events_whole")
                filtered = whole.filter(pl.col("day") == day)
                t_whole.append(time.perf_counter() - t0)
            assert pushed is not None and whole is not None
            assert pushed.sort("id").equals(filtered.sort("id"))
            for n in SPANS:  # bytes moved proportional to the partitions read?
                spans[n] = s.read("events", start, start + dt.timedelta(days=n - 1))
                assert spans[n]["day"].n_unique() == n
    print(f"snowflake (fakesnow server): {DAYS} days x {ROWS_PER_DAY} rows, read 1 day")
    print(f"  {'':22}{'rows moved':>12}{'Arrow MB':>10}{'median s':>10}")
    for label, df, ts in (("pushdown", pushed, t_pushed), ("no pushdown", whole, t_whole)):
        print(f"  {label:22}{df.height:>12,}{df.estimated_size() / 1e6:>10.2f}{median(ts):>10.3f}")
    print(
        f"  rows read per partition: {pushed.height:,} with pushdown, {whole.height:,} without "
        f"({whole.height / pushed.height:.0f}x fewer with pushdown = days in the table); "
        f"time ratio {median(t_whole) / median(t_pushed):.1f}x"
    )
    print("  pushdown, partitions read -> rows and Arrow bytes moved (per partition):")
    for n, df in spans.items():
        mb = df.estimated_size() / 1e6
        print(
            f"    {n:>3} day(s): {df.height:>8,} rows {mb:>7.2f} MB "
            f"({df.height / n:,.0f} rows, {mb / n:.3f} MB per partition)"
        )


def bench_s3() -> None:
    from upath import UPath

    from mlx_resources.io_managers import _polars_files
    from tests.sources._s3_server import s3_server

    rng = np.random.default_rng(0)
    df = pl.DataFrame({"id": np.arange(FRAME_ROWS), "x": rng.random(FRAME_ROWS)})
    results: dict[str, tuple[float, float, int]] = {}
    with s3_server() as s3, tempfile.TemporaryDirectory() as tmp:
        targets = {
            "local disk": UPath(tmp) / "frame.arrow",
            "S3 (moto, loopback)": UPath(
                f"s3://{s3.bucket}/bench/frame.arrow",
                **s3.options(default_block_size=8 * 2**20),
            ),
        }
        for label, target in targets.items():
            writes, reads, size = [], [], 0
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                staged = _polars_files.stage(df, target, "ipc", "uncompressed")
                staged.commit()
                writes.append(time.perf_counter() - t0)
                size = staged.byte_size
                t0 = time.perf_counter()
                back = _polars_files.open_lazy(target).collect()
                reads.append(time.perf_counter() - t0)
                assert back.height == FRAME_ROWS
            results[label] = (median(writes), median(reads), size)
    mb = results["local disk"][2] / 1e6
    print(f"PolarsIOManager storage: one {mb:.0f} MB Arrow IPC partition, median of {REPEATS}")
    print(f"  {'':22}{'write MB/s':>12}{'read MB/s':>12}")
    for label, (w, r, size) in results.items():
        print(f"  {label:22}{size / 1e6 / w:>12.0f}{size / 1e6 / r:>12.0f}")
    (lw, lr, _), (sw, sr, _) = results["local disk"], results["S3 (moto, loopback)"]
    print(f"  S3 / local time ratio: write {sw / lw:.1f}x, read {sr / lr:.1f}x")


def main() -> None:
    bench_snowflake()
    bench_s3()


if __name__ == "__main__":
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)
