"""Jobs: the lifecycle in four runs, so partitioned and unpartitioned work each run once.

``reference`` (planes) -> ``daily`` (raw tables and features, one run per partition range)
-> ``training`` (training set, model, evaluation, registration) -> ``monitoring`` (drift per
day against the new model). The arrival schedule runs ``monitoring`` for each new day; the drift
sensor runs ``training`` when drift calls for it.
"""

from __future__ import annotations

import dagster as dg

# Training runs its steps in forked workers: process isolation (a crashed or leaking training
# step cannot take the run down) without a fresh interpreter per step (about 2 s each here); the
# preloaded modules are imported once by the forkserver. Light jobs (ingest, features, drift) run
# in-process: polars already uses every core, and a step costs no process start at all.
LIGHT_EXECUTOR = dg.in_process_executor
# Imported once by the forkserver so a step's fork does not import them again: the code
# location, the heavy libraries, and the instance's storage modules (profiled: importing the
# SQLite storages was most of a forked step's start).
PRELOAD_MODULES = [
    "mlx_assets.definitions",
    "polars",
    "torch",
    "upath",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.local_compute_log_manager",
    "alembic.script",
]
EXECUTOR = dg.multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}},
    },
    name="mlx_forkserver_executor",
)

# Asset keys per job, in lifecycle order (the lifecycle runner plans with these).
JOB_ASSETS: dict[str, tuple[str, ...]] = {
    "reference": ("planes",),
    "daily": ("raw_flights", "raw_weather", "flight_features"),
    "training": ("training_set", "model", "model_evaluation", "registered_model"),
    "monitoring": ("raw_flights", "raw_weather", "flight_features", "feature_drift"),
}

reference_job = dg.define_asset_job(
    "reference",
    selection=dg.AssetSelection.assets(*JOB_ASSETS["reference"]),
    description="Reference tables (unpartitioned).",
    executor_def=LIGHT_EXECUTOR,
)
daily_job = dg.define_asset_job(
    "daily",
    selection=dg.AssetSelection.assets(*JOB_ASSETS["daily"]),
    description="Raw tables and features for a day or a range of days (one run per range).",
    executor_def=LIGHT_EXECUTOR,
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
    executor_def=LIGHT_EXECUTOR,
)
JOBS = [reference_job, daily_job, training_job, monitoring_job]
