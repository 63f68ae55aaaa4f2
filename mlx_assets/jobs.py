"""Jobs per lifecycle instance: the lifecycle in four runs, so partitioned and unpartitioned work
each run once.

``reference`` (planes) -> ``daily`` (raw tables and features, one run per partition range)
-> ``training`` (training set, model, evaluation, registration) -> ``monitoring`` (drift per
day against the new model). The arrival schedule runs ``monitoring`` for each new day; the drift
sensor runs ``training`` when drift calls for it.
"""

from __future__ import annotations

import dagster as dg

from mlx_assets.component.spec import Lifecycle
from mlx_resources.run_liveness import liveness_in_process_executor

# Every job runs its steps in-process: a step costs no process start (a fresh interpreter per
# step costs about 2 s here, a forkserver fork about 0.5 s with Dagster's per-process instance
# set-up; benchmarks/bench_executor.py). Training keeps process isolation inside its step: the
# local_torch plugin trains in a child forked from a server that has torch loaded
# (``isolation: process``), and DDP trains in torchrun workers under Dagster Pipes.
# The in-process executor that also records the run's process (pid, start time, host) as run
# tags, so a run whose process was killed is found and failed (mlx_resources/run_liveness.py).
EXECUTOR = liveness_in_process_executor


TRAINING_TAGS = {
    "dagster/max_runtime": str(60 * 60),  # run monitoring fails a run stuck past an hour
    "dagster/max_retries": "1",  # run-level retry (run_retries on in dagster.yaml)
    "dagster/retry_strategy": "FROM_FAILURE",
}
STAGES = ("reference", "daily", "training", "monitoring")
DESCRIPTIONS = {
    "reference": "Reference tables (unpartitioned).",
    "daily": "Raw tables and features for a day or a range of days (one run per range).",
    "training": "Training set -> model -> evaluation -> registered version.",
    "monitoring": "A day (or range) of raw data, features and drift against the current model.",
}


def build_jobs(lc: Lifecycle) -> list[dg.UnresolvedAssetJobDefinition]:
    """The instance's four jobs (``reference`` only when it has reference tables), named
    ``Lifecycle.job(stage)``; each selects ``Lifecycle.job_assets[stage]``."""
    jobs = []
    for stage in STAGES:
        keys = lc.job_assets[stage]
        if not keys:
            continue
        jobs.append(
            dg.define_asset_job(
                lc.job(stage),
                selection=dg.AssetSelection.assets(*keys),
                description=f"{lc.model_name}: {DESCRIPTIONS[stage]}",
                tags=TRAINING_TAGS if stage == "training" else None,
                executor_def=EXECUTOR,
            )
        )
    return jobs
