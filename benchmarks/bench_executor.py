"""Per-step orchestration overhead of the executor the main jobs use, and the cost of the
process isolation that training keeps.

A chain of N trivial assets runs under (a) Dagster's default multiprocess executor (a fresh
interpreter per step), (b) a forkserver multiprocess executor that preloads the code location,
torch and Dagster's SQLite storages, and (c) the in-process executor that MLX's jobs use.
Per-step overhead = (wall - in-process wall) / N. Goal: under 150 ms per step, with process
isolation kept for training: that is the ``local_torch`` plugin's ``isolation: process``, whose
cost (a child forked from a torch-loaded server, data handed over as Arrow files) is measured
against training in the calling process on the same small data.

    ./dev bench executor [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, machine, row

STEPS = int(os.environ.get("MLX_BENCH_STEPS", "8"))
PRELOAD = [
    "mlx_assets.definitions",
    "polars",
    "torch",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.local_compute_log_manager",
    "alembic.script",
]


def _chain(n: int) -> list[dg.AssetsDefinition]:
    out: list[dg.AssetsDefinition] = []
    for i in range(n):
        deps = [out[-1]] if out else []

        @dg.asset(name=f"step_{i:02d}", deps=deps)
        def _step() -> None:
            return None

        out.append(_step)
    return out


def _defs() -> dg.Definitions:
    from mlx_assets.jobs import EXECUTOR

    assets = _chain(STEPS)
    sel = dg.AssetSelection.assets(*assets)
    forkserver = dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": PRELOAD}}}, name="forkserver"
    )
    return dg.Definitions(
        assets=assets,
        jobs=[
            dg.define_asset_job("spawn", selection=sel, executor_def=dg.multiprocess_executor),
            dg.define_asset_job("forkserver", selection=sel, executor_def=forkserver),
            dg.define_asset_job("mlx", selection=sel, executor_def=EXECUTOR),
        ],
    )


defs = _defs()


def _time(job: str, instance: dg.DagsterInstance) -> float:
    recon = ReconstructableRepository.for_file(__file__, "defs").get_reconstructable_job(job)
    start = time.perf_counter()
    with dg.execute_job(recon, instance) as result:
        assert result.success
    return time.perf_counter() - start


def _isolation_cost(repeats: int) -> tuple[float, float]:
    """Seconds to train a tiny model with isolation 'process' and 'none' (best of repeats)."""
    from mlx_plugins.ml_platforms.base import TrainingSpec
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform
    from mlx_plugins.testing.contracts import _learnable_frame

    train, valid = _learnable_frame(2000, 1), _learnable_frame(500, 2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("process", "none"):
            times = []
            for i in range(repeats + 1):  # the first 'process' run starts the forkserver
                spec = TrainingSpec(
                    numeric_features=("x", "noise"),
                    categorical_features=("cat",),
                    target="y",
                    artifact_dir=f"{tmp}/{mode}{i}",
                )
                plugin = LocalTorchPlatform(epochs=1, hidden=[8], isolation=mode, num_threads=1)
                start = time.perf_counter()
                with plugin.session():
                    plugin.train(train, valid, spec)
                times.append(time.perf_counter() - start)
            out[mode] = min(times[1:])
    return out["process"], out["none"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        _time("forkserver", instance)  # start the forkserver once, as a run worker would
        results = {
            job: min(_time(job, instance) for _ in range(args.repeats))
            for job in ("mlx", "spawn", "forkserver")
        }
    floor = results["mlx"]
    print(f"{STEPS} chained steps, best of {args.repeats} runs")
    print(row("executor", "wall s", "per step ms", "vs spawn"))
    for job, wall in results.items():
        per = (wall - floor) / STEPS * 1000
        print(row(job, f"{wall:.2f}", f"{per:.0f}", f"{results['spawn'] / wall:.2f}x faster"))
    isolated, inline = _isolation_cost(args.repeats)
    print(
        f"\nmlx jobs (in-process): 0 ms per step by construction (goal < 150 ms); "
        f"spawn {(results['spawn'] - floor) / STEPS * 1000:.0f} ms, "
        f"forkserver {(results['forkserver'] - floor) / STEPS * 1000:.0f} ms"
    )
    print(
        f"training isolation (once per training): {1000 * (isolated - inline):.0f} ms "
        f"({isolated:.2f} s isolated vs {inline:.2f} s in-process, tiny model)"
    )


if __name__ == "__main__":
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    main()
    print(f"machine: {machine()}; load average after: {load()}", flush=True)
