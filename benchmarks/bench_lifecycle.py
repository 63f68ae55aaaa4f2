"""The whole lifecycle through Dagster against a plain script doing the same work (the floor).

The plain script calls the same polars and torch functions in sequence with files in between:
read the source, write, read, build features, write, read, split by time, train, evaluate,
compare each day's drift. MLX runs `mlx lifecycle` on a fresh instance and home. Both at each
scale, in the same process run; the ratio is MLX / floor. Goal: under 1.5x at 10x scale.

    ./dev bench lifecycle [--scales 1 10] [--epochs 6]

A second table (``--partition-versions``, or alone with ``--only-partition-versions``) prices
per-partition data versions in a single-run backfill: a year of daily partitions of two chained
assets (raw -> features, like ``daily``) in ONE run, with each partition's own data version (the
contained hook in ``mlx_resources/io_managers/_dagster_partition_versions.py``) against the same
run giving every partition the range's version (Dagster's own behaviour), and against chunked
runs (one run per day, the public alternative), all on a SQLite instance in the same process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def composition(scale: float, epochs: int) -> dict:
    raw = yaml.safe_load((ROOT / "mlx.yaml").read_text())
    raw["plugins"]["data_source"][0]["config"]["scale"] = scale
    raw["plugins"]["ml_platform"]["config"]["epochs"] = epochs
    raw.pop("profiles", None)
    # Time the same work as the floor, which has no gate: a model that misses the quality gate
    # (it can at 10x, where the resampled copies shift the calibration) must still register.
    raw.setdefault("settings", {})["quality_gate"] = {
        "min_roc_auc": 0.0,
        "max_log_loss_ratio": 100.0,
    }
    return raw


def run_mlx(scale: float, epochs: int, work: Path) -> float:
    comp = work / "mlx.yaml"
    comp.write_text(yaml.safe_dump(composition(scale, epochs)))
    env = {
        **os.environ,
        "MLX_HOME": str(work / "home"),
        "MLX_COMPOSITION": str(comp),
        "DAGSTER_HOME": str(work / "dagster"),
    }
    env.pop("MLX_PROFILE", None)
    (work / "dagster").mkdir()
    (work / "dagster" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def run_floor(scale: float, epochs: int, work: Path) -> float:
    """The same work as plain function calls; files written with polars in between."""
    code = f"""
import time, polars as pl
from datetime import date
start = time.perf_counter()
from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform
from mlx_plugins.ml_platforms.base import TrainingSpec
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
from mlx_assets.features.flight_features import (
    build_features, NUMERIC_FEATURES, CATEGORICAL_FEATURES, TARGET)
from mlx_assets.training.training_set import split_by_time, SPLIT
from mlx_assets.evaluation.evaluation import evaluate
from mlx_assets.monitoring.feature_drift import FEATURES, MONITORED_NUMERIC, MONITORED_CATEGORICAL
from mlx_resources.platform import TrainingWindow
w = {str(work)!r}
src = NYCFlights13Source(scale={scale})
with src.session():
    for t in ("flights", "weather", "planes"):
        src.read(t).write_ipc(f"{{w}}/{{t}}.arrow")
fl, we, pn = (pl.read_ipc(f"{{w}}/{{t}}.arrow") for t in ("flights", "weather", "planes"))
build_features(fl, we, pn).write_ipc(f"{{w}}/features.arrow")
ts = split_by_time(pl.scan_ipc(f"{{w}}/features.arrow"), TrainingWindow())
ts.write_ipc(f"{{w}}/training_set.arrow")
ts = pl.read_ipc(f"{{w}}/training_set.arrow")
spec = TrainingSpec(numeric_features=NUMERIC_FEATURES, categorical_features=CATEGORICAL_FEATURES,
                    target=TARGET, artifact_dir=f"{{w}}/model")
p = LocalTorchPlatform(epochs={epochs})
with p.session():
    m = p.train(ts.filter(pl.col(SPLIT) == "train"), ts.filter(pl.col(SPLIT) == "valid"), spec)
    test = ts.filter(pl.col(SPLIT) == "test")
    base = float(ts.filter(pl.col(SPLIT) == "train")[TARGET].mean())
    y, carriers = test[TARGET].to_numpy().astype(bool), test["carrier"].to_numpy()
    ev = evaluate(y, p.predict_proba(m, test), carriers, base)
feats = pl.read_ipc(f"{{w}}/features.arrow")
ref = ts.filter(pl.col(SPLIT) == "train").select(FEATURES)
det = PolarsDriftDetector()
prep = det.prepare_reference(ref, numeric=MONITORED_NUMERIC, categorical=MONITORED_CATEGORICAL)
for (d,), cur in feats.partition_by("date", as_dict=True).items():
    det.compare_prepared(prep, cur.select(FEATURES))
print(time.perf_counter() - start)
"""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _partition_assets(days: int, rows_per_day: int):
    import datetime as dt

    import dagster as dg
    import numpy as np
    import polars as pl

    daily = dg.DailyPartitionsDefinition(start_date="2013-01-01", end_date="2014-01-01")
    single = dg.BackfillPolicy.single_run()

    @dg.asset(partitions_def=daily, backfill_policy=single, metadata={"partition_expr": "date"})
    def raw(context):  # no annotations: this module has postponed (string) annotations
        keys = context.partition_keys
        n = len(keys) * rows_per_day
        rng = np.random.default_rng(0)
        return pl.DataFrame(
            {
                "date": pl.Series([dt.date.fromisoformat(k) for k in keys]).gather(
                    np.repeat(np.arange(len(keys)), rows_per_day)
                ),
                "x": rng.random(n),
                "y": rng.integers(0, 100, n),
            }
        )

    @dg.asset(partitions_def=daily, backfill_policy=single, metadata={"partition_expr": "date"})
    def features(raw):
        return raw.with_columns(z=pl.col("x") * pl.col("y"))

    keys = daily.get_partition_keys()[:days]
    return [raw, features], keys


def bench_partition_versions(days: int, rows_per_day: int, repeats: int, chunk_days: int) -> None:
    """One run over ``days`` partitions: own version per partition vs one shared version; and
    chunked runs (one per day, measured on ``chunk_days`` days and scaled to ``days``)."""
    import dagster as dg
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from mlx_resources.io_managers import PolarsIOManager, polars_io

    assets, keys = _partition_assets(days, rows_per_day)
    own = polars_io._set_partition_data_versions
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}

    def one_run(per_partition: bool) -> float:
        polars_io._set_partition_data_versions = own if per_partition else (lambda c, v: None)
        try:
            with tempfile.TemporaryDirectory() as d, dg.DagsterInstance.local_temp(d) as inst:
                res = {"io_manager": PolarsIOManager(base_path=f"{d}/data")}
                start = time.perf_counter()
                dg.materialize(assets, instance=inst, resources=res, tags=tags)
                elapsed = time.perf_counter() - start
                rec = inst.fetch_materializations(dg.AssetKey("features"), limit=days).records
                versions = {r.asset_materialization.tags["dagster/data_version"] for r in rec}
                assert (len(versions) == days) is per_partition, len(versions)
                return elapsed
        finally:
            polars_io._set_partition_data_versions = own

    def chunked() -> float:
        with tempfile.TemporaryDirectory() as d, dg.DagsterInstance.local_temp(d) as inst:
            res = {"io_manager": PolarsIOManager(base_path=f"{d}/data")}
            start = time.perf_counter()
            for key in keys[:chunk_days]:
                dg.materialize(assets, instance=inst, resources=res, partition_key=key)
            return (time.perf_counter() - start) * days / chunk_days

    one_run(True)  # warm imports and caches
    shared, per, chunks = [], [], []
    for _ in range(repeats):  # interleaved
        shared.append(one_run(False))
        per.append(one_run(True))
        chunks.append(chunked())
    base = min(shared)
    print(
        f"\nper-partition data versions: {days} daily partitions x 2 assets, "
        f"{rows_per_day} rows/day, one run (best of {repeats}, interleaved)"
    )
    print(f"{'variant':<44} {'s':>7} {'ratio':>7}")
    for name, xs in (
        ("one run, one version for all partitions", shared),
        ("one run, each partition its own version", per),
        (f"one run per partition (from {chunk_days} runs)", chunks),
    ):
        print(f"{name:<44} {min(xs):>7.2f} {min(xs) / base:>6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved; the best of each counts")
    ap.add_argument(
        "--partition-versions", action="store_true", help="also price per-partition versions"
    )
    ap.add_argument("--only-partition-versions", action="store_true")
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rows-per-day", type=int, default=1000)
    ap.add_argument("--chunk-days", type=int, default=10)
    args = ap.parse_args()
    if args.only_partition_versions:
        bench_partition_versions(args.days, args.rows_per_day, args.repeats, args.chunk_days)
        return
    print(f"{'scale':>6} {'floor s':>9} {'mlx s':>9} {'ratio':>7}")
    for scale in args.scales:
        floors, ours = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                ours.append(run_mlx(scale, args.epochs, Path(b)))
                floors.append(run_floor(scale, args.epochs, Path(a)))
        floor, mlx = min(floors), min(ours)
        print(
            f"{scale:>6g} {floor:>9.1f} {mlx:>9.1f} {mlx / floor:>6.2f}x   "
            f"(all floor: {', '.join(f'{x:.1f}' for x in floors)}; "
            f"all mlx: {', '.join(f'{x:.1f}' for x in ours)})",
            flush=True,
        )
    print("\ngoal: under 1.5x at 10x scale (both include interpreter start and imports)")
    if args.partition_versions:
        bench_partition_versions(args.days, args.rows_per_day, args.repeats, args.chunk_days)


if __name__ == "__main__":
    from _common import load, machine  # this script's folder is on sys.path

    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)
