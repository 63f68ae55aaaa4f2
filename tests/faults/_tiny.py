"""A tiny code location for fault tests: one asset that can be told to block until killed.

``MLX_FAULT_READY`` names a file the asset creates when it starts; ``MLX_FAULT_BLOCK=1`` makes it
sleep until killed. Jobs use the platform's executor (mlx_assets.jobs.EXECUTOR), so runs record
their process like the lifecycle's do.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from mlx_assets.jobs import EXECUTOR


@dg.asset
def slow() -> int:
    ready = os.environ.get("MLX_FAULT_READY")
    if ready:
        Path(ready).write_text(str(os.getpid()))
    while os.environ.get("MLX_FAULT_BLOCK") == "1":
        time.sleep(0.1)
    return 1


tiny_job = dg.define_asset_job("tiny", selection=[slow], executor_def=EXECUTOR)
defs = dg.Definitions(assets=[slow], jobs=[tiny_job], executor=EXECUTOR)


def run_tiny() -> None:
    """Execute ``tiny`` in this process on the instance at DAGSTER_HOME (the lifecycle's way)."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    recon = ReconstructableRepository.for_module(
        "tests.faults._tiny", "defs", working_directory=None
    ).get_reconstructable_job("tiny")
    with dg.DagsterInstance.get() as instance, dg.execute_job(recon, instance) as result:
        assert result.success


def first_use(log_path: Path) -> None:
    """What ``mlx lifecycle`` does on a home, with the tiny job: create the instance (first use),
    take the lifecycle lock, materialize ``slow`` unless it already is. Log lines go to
    ``log_path`` (appended, one per line)."""
    from mlx_resources.instance_home import ensure_dagster_home, lifecycle_lock

    def log(message: str) -> None:
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()} {message}\n")

    home = ensure_dagster_home(log=log)
    with lifecycle_lock(home, log), dg.DagsterInstance.get() as instance:
        if instance.get_latest_materialization_event(dg.AssetKey("slow")) is None:
            run_tiny()
            log("materialized slow")
        else:
            log("nothing to do")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["first-use"]:
        first_use(Path(sys.argv[2]))
    else:
        run_tiny()
