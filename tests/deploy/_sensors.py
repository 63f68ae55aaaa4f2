"""A small code location for the daemon-restart test: a counting sensor and two schedules.

``counting`` advances its cursor by one on every evaluation (every second), so a cursor that
restarts from 1 after a daemon restart is visible in its ticks. ``hourly_on`` and
``hourly_off`` exist so their RUNNING/STOPPED state (kept in the schedule storage) can be
checked across the restart; ``every_minute`` is started by the test and must tick after it.
"""

from __future__ import annotations

import dagster as dg


@dg.asset
def ping() -> int:
    return 1


ping_job = dg.define_asset_job("ping_job", selection=[ping])


@dg.sensor(job=ping_job, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
def counting(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    n = int(context.cursor or 0) + 1
    context.update_cursor(str(n))
    return dg.SkipReason(f"evaluation {n}")


hourly_on = dg.ScheduleDefinition(
    name="hourly_on",
    cron_schedule="0 * * * *",
    job=ping_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
every_minute = dg.ScheduleDefinition(name="every_minute", cron_schedule="* * * * *", job=ping_job)

defs = dg.Definitions(
    assets=[ping], jobs=[ping_job], sensors=[counting], schedules=[hourly_on, every_minute]
)
