"""Per-step orchestration overhead of the executor the main jobs use.

A chain of N trivial assets runs under (a) Dagster's default multiprocess executor (a fresh
interpreter per step), (b) MLX's executor (forkserver with preloaded modules), and (c) the
in-process executor (no isolation: the floor). Per-step overhead = (wall - floor wall) / N.
Goal: (b) under 150 ms per step, keeping process isolation.

    ./dev bench executor [--steps 8]
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
from _common import row

STEPS = int(os.environ.get("MLX_BENCH_STEPS", "8"))


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
    return dg.Definitions(
        assets=assets,
        jobs=[
            dg.define_asset_job("spawn", selection=sel, executor_def=dg.multiprocess_executor),
            dg.define_asset_job("mlx", selection=sel, executor_def=EXECUTOR),
            dg.define_asset_job("in_process", selection=sel, executor_def=dg.in_process_executor),
        ],
    )


defs = _defs()


def _time(job: str, instance: dg.DagsterInstance) -> float:
    recon = ReconstructableRepository.for_file(__file__, "defs").get_reconstructable_job(job)
    start = time.perf_counter()
    with dg.execute_job(recon, instance) as result:
        assert result.success
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        _time("mlx", instance)  # start the forkserver once, as a long-lived worker would
        results = {
            job: min(_time(job, instance) for _ in range(args.repeats))
            for job in ("in_process", "spawn", "mlx")
        }
    floor = results["in_process"]
    print(f"{STEPS} chained steps, best of {args.repeats} runs")
    print(row("executor", "wall s", "per step ms", "vs spawn"))
    for job, wall in results.items():
        per = (wall - floor) / STEPS * 1000 if job != "in_process" else 0.0
        ratio = results["spawn"] / wall
        print(row(job, f"{wall:.2f}", f"{per:.0f}", f"{ratio:.2f}x faster"))
    per_mlx = (results["mlx"] - floor) / STEPS * 1000
    print(
        f"\nmlx executor: {per_mlx:.0f} ms per step over in-process (goal < 150 ms); "
        f"spawn: {(results['spawn'] - floor) / STEPS * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
