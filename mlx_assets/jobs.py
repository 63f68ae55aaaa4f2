"""Jobs: the lifecycle in four runs, so partitioned and unpartitioned work each run once.

``reference`` (planes) -> ``daily`` (raw tables and features, one run per partition range)
-> ``training`` (training set, model, evaluation, registration) -> ``monitoring`` (drift per
day against the new model). The arrival schedule runs ``monitoring`` for each new day; the drift
sensor runs ``training`` when drift calls for it.
"""

from __future__ import annotations

import dagster as dg

from mlx_resources.run_liveness import liveness_in_process_executor

# Every job runs its steps in-process: a step costs no process start (a fresh interpreter per
# step costs about 2 s here, a forkserver fork about 0.5 s with Dagster's per-process instance
# set-up; benchmarks/bench_executor.py). Training keeps process isolation inside its step: the
# local_torch plugin trains in a child forked from a server that has torch loaded
# (``isolation: process``), and DDP trains in torchrun workers under Dagster Pipes.
# The in-process executor that also records the run's process (pid, start time, host) as run
# tags, so a run whose process was killed is found and failed (mlx_resources/run_liveness.py).
EXECUTOR = liveness_in_process_executor


# Asset keys per job, in lifecycle order (the lifecycle runner plans with these).
JOB_ASSETS: dict[str, tuple[str, ...]] = {
    "reference": ("planes",),
    "daily": ("raw_flights", "raw_weather", "flight_features"),
    "training": ("training_set", "model", "model_evaluation", "registered_model"),
    "monitoring": (
        "raw_flights",
        "raw_weather",
        "flight_features",
        "feature_drift",
        "drift_incident_summary",
    ),
}

reference_job = dg.define_asset_job(
    "reference",
    selection=dg.AssetSelection.assets(*JOB_ASSETS["reference"]),
    description="Reference tables (unpartitioned).",
    executor_def=EXECUTOR,
)
daily_job = dg.define_asset_job(
    "daily",
    selection=dg.AssetSelection.assets(*JOB_ASSETS["daily"]),
    description="Raw tables and features for a day or a range of days (one run per range).",
    executor_def=EXECUTOR,
)
training_job = dg.define_asset_job(
    "training",
    selection=dg.AssetSelection.assets(*JOB_ASSETS["training"]),
    tags={
        "dagster/max_runtime": str(60 * 60),  # run monitoring fails a run stuck past an hour
        "dagster/max_retries": "1",  # run-level retry (run_retries on in dagster.yaml)
        "dagster/retry_strategy": "FROM_FAILURE",
    },
    description="Training set -> model -> evaluation -> registered version.",
    executor_def=EXECUTOR,
)
monitoring_job = dg.define_asset_job(
    "monitoring",
    selection=dg.AssetSelection.assets(*JOB_ASSETS["monitoring"]),
    description="A day (or range) of raw data, features and drift against the current model.",
    executor_def=EXECUTOR,
)
JOBS = [reference_job, daily_job, training_job, monitoring_job]
